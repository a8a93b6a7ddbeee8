"""TokenCache: reuse rules, LRU bound, invalidation and single-flight minting."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from skyflow_vault_plugin.skyflow.cache import (
    DEFAULT_MAX_ENTRIES,
    ByteBudget,
    CacheKey,
    TokenCache,
    entry_size,
    process_budget,
)
from skyflow_vault_plugin.skyflow.responses import IssuedToken

NOW = 1_700_000_000.0
GEN = (1, 1)


def token(name: str = "t", lifetime: float = 3600.0, now: float = NOW) -> IssuedToken:
    return IssuedToken(
        access_token=f"token-{name}", token_type="Bearer", expires_at=now + lifetime, issued_at=now
    )


def key(role: str = "role", ctx: str = "") -> CacheKey:
    return (role, ctx)


# -------------------------------------------------------------------------------- reuse


def test_construction() -> None:
    assert TokenCache().max_entries == DEFAULT_MAX_ENTRIES
    with pytest.raises(ValueError, match="max_entries"):
        TokenCache(0)


def test_get_of_a_missing_key() -> None:
    assert TokenCache().get(key(), min_remaining=0, now=NOW) is None


def test_min_remaining_semantics() -> None:
    cache = TokenCache()
    held = token(lifetime=100)
    cache.put(key(), held, GEN)
    assert cache.get(key(), min_remaining=50, now=NOW) is held
    assert cache.get(key(), min_remaining=100, now=NOW) is held  # "at least": equal is enough
    assert cache.get(key(), min_remaining=100.5, now=NOW) is None
    assert len(cache) == 1  # too short to reuse, but still valid: kept (served while down)
    assert cache.get(key(), min_remaining=50, now=NOW + 60) is None
    assert cache.get(key(), min_remaining=40, now=NOW + 60) is held


def test_get_valid_ignores_min_remaining_but_not_expiry() -> None:
    cache = TokenCache()
    held = token(lifetime=100)
    cache.put(key(), held, GEN)
    assert cache.get_valid(key(), now=NOW + 95) is held
    assert cache.get_valid(key(), now=NOW + 100) is None
    assert len(cache) == 0


def test_expired_tokens_are_removed() -> None:
    cache = TokenCache()
    cache.put(key("a"), token("a", lifetime=10), GEN)
    cache.put(key("b"), token("b", lifetime=1000), GEN)
    assert cache.get(key("a"), min_remaining=0, now=NOW + 10) is None
    assert len(cache) == 1
    assert cache.get(key("a"), min_remaining=0, now=NOW) is None  # gone for good
    assert cache.get(key("b"), min_remaining=0, now=NOW + 10) is not None


def test_put_replaces() -> None:
    cache = TokenCache()
    cache.put(key(), token("old"), GEN)
    newer = token("new")
    cache.put(key(), newer, (2, 1))
    assert len(cache) == 1
    assert cache.get(key(), min_remaining=0, now=NOW) is newer


def test_keys_are_role_and_ctx() -> None:
    cache = TokenCache()
    cache.put(key("r", ""), token("plain"), GEN)
    cache.put(key("r", '{"u":1}'), token("ctx"), GEN)
    cache.put(key("s", ""), token("other"), GEN)
    assert len(cache) == 3
    found = cache.get(key("r", '{"u":1}'), min_remaining=0, now=NOW)
    assert found is not None
    assert found.access_token == "token-ctx"


# ---------------------------------------------------------------------------------- LRU


def test_lru_eviction_count_and_order() -> None:
    cache = TokenCache(max_entries=3)
    for name in "abc":
        cache.put(key(name), token(name), GEN)
    assert cache.evictions == 0
    assert cache.get(key("a"), min_remaining=0, now=NOW) is not None  # "a" now most recent
    cache.put(key("d"), token("d"), GEN)  # evicts "b"
    assert len(cache) == 3
    assert cache.evictions == 1
    assert cache.get(key("b"), min_remaining=0, now=NOW) is None
    for name in "acd":
        assert cache.get(key(name), min_remaining=0, now=NOW) is not None
    for name in "efgh":
        cache.put(key(name), token(name), GEN)
    assert len(cache) == 3
    assert cache.evictions == 5
    assert [n for n in "acdefgh" if cache.get(key(n), min_remaining=0, now=NOW)] == list("fgh")


def test_a_refused_get_does_not_refresh_recency() -> None:
    cache = TokenCache(max_entries=2)
    cache.put(key("short"), token("short", lifetime=10), GEN)
    cache.put(key("long"), token("long"), GEN)
    assert cache.get(key("short"), min_remaining=60, now=NOW) is None
    cache.put(key("new"), token("new"), GEN)
    assert cache.get_valid(key("short"), now=NOW) is None  # it was the least recently used
    assert cache.get(key("long"), min_remaining=0, now=NOW) is not None


def test_replacing_does_not_evict() -> None:
    cache = TokenCache(max_entries=2)
    for _ in range(5):
        cache.put(key("a"), token("a"), GEN)
        cache.put(key("b"), token("b"), GEN)
    assert cache.evictions == 0
    assert len(cache) == 2


# -------------------------------------------------------------------------- invalidation


def test_drop_role() -> None:
    cache = TokenCache()
    cache.put(key("a", ""), token(), GEN)
    cache.put(key("a", "x"), token(), GEN)
    cache.put(key("ab", ""), token(), GEN)
    cache.put(key("b", "a"), token(), GEN)
    cache.drop_role("a")
    assert len(cache) == 2
    assert cache.get(key("ab", ""), min_remaining=0, now=NOW) is not None
    assert cache.get(key("b", "a"), min_remaining=0, now=NOW) is not None
    cache.drop_role("missing")
    assert len(cache) == 2


def test_clear() -> None:
    cache = TokenCache()
    for name in "abc":
        cache.put(key(name), token(name), GEN)
    cache.clear()
    assert len(cache) == 0
    assert cache.get(key("a"), min_remaining=0, now=NOW) is None


# ------------------------------------------------------------------------- single flight


class Minter:
    """A mint function that waits for ``release`` and counts its calls."""

    def __init__(self, result: IssuedToken | BaseException) -> None:
        self.result = result
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    async def __call__(self) -> IssuedToken:
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


async def test_single_flight_shares_one_call() -> None:
    cache = TokenCache()
    minted = token("shared")
    mint = Minter(minted)
    waiters = [asyncio.create_task(cache.single_flight(key(), mint)) for _ in range(10)]
    await mint.started.wait()
    await asyncio.sleep(0)
    mint.release.set()
    results = await asyncio.gather(*waiters)
    assert mint.calls == 1
    assert all(result is minted for result, _ in results)
    assert sorted(joined for _, joined in results) == [False] + [True] * 9
    assert len(cache) == 0  # single_flight itself stores nothing; the caller's mint does


async def test_single_flight_is_per_key() -> None:
    cache = TokenCache()
    first, second = Minter(token("1")), Minter(token("2"))
    a = asyncio.create_task(cache.single_flight(key("r", "a"), first))
    b = asyncio.create_task(cache.single_flight(key("r", "b"), second))
    first.release.set()
    second.release.set()
    (ta, ja), (tb, jb) = await asyncio.gather(a, b)
    assert (first.calls, second.calls) == (1, 1)
    assert (ta.access_token, tb.access_token) == ("token-1", "token-2")
    assert not ja
    assert not jb


async def test_single_flight_failure_reaches_every_waiter_and_is_forgotten() -> None:
    cache = TokenCache()
    failing = Minter(RuntimeError("skyflow down"))
    waiters = [asyncio.create_task(cache.single_flight(key(), failing)) for _ in range(5)]
    await failing.started.wait()
    failing.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert failing.calls == 1
    assert all(isinstance(r, RuntimeError) and str(r) == "skyflow down" for r in results)
    assert len({id(r) for r in results}) == 1  # the very same error, delivered to all
    assert len(cache) == 0

    # nothing was remembered: the next call mints again
    ok = Minter(token("after"))
    ok.release.set()
    result, joined = await cache.single_flight(key(), ok)
    assert ok.calls == 1
    assert result.access_token == "token-after"
    assert joined is False


async def test_caller_cancellation_does_not_cancel_the_shared_call() -> None:
    cache = TokenCache()
    minted = token("survivor")
    mint = Minter(minted)
    owner = asyncio.create_task(cache.single_flight(key(), mint))
    await mint.started.wait()
    joiner = asyncio.create_task(cache.single_flight(key(), mint))
    await asyncio.sleep(0)
    owner.cancel()  # the request that started the mint gives up
    with pytest.raises(asyncio.CancelledError):
        await owner
    mint.release.set()
    result, joined = await joiner
    assert result is minted
    assert joined is True
    assert mint.calls == 1
    assert mint.cancelled is False


async def test_all_callers_cancelled_leaves_no_unretrieved_error() -> None:
    """A failure nobody is left to receive is marked seen (no 'exception never retrieved')."""
    cache = TokenCache()
    failing = Minter(RuntimeError("late failure"))
    caller = asyncio.create_task(cache.single_flight(key(), failing))
    await failing.started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    failing.release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    # the in-flight entry is gone: a new call mints again
    again = Minter(token("new"))
    again.release.set()
    result, joined = await cache.single_flight(key(), again)
    assert (result.access_token, joined, again.calls) == ("token-new", False, 1)


async def test_aclose_cancels_minting_under_way() -> None:
    cache = TokenCache()
    mint = Minter(token())
    waiter = asyncio.create_task(cache.single_flight(key(), mint))
    await mint.started.wait()
    await cache.aclose()
    assert mint.cancelled is True
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # later calls start afresh
    fresh = Minter(token("fresh"))
    fresh.release.set()
    result, joined = await cache.single_flight(key(), fresh)
    assert (result.access_token, joined) == ("token-fresh", False)


async def test_aclose_with_nothing_in_flight() -> None:
    cache = TokenCache()
    cache.put(key(), token(), GEN)
    await cache.aclose()
    await cache.aclose()


def test_token_repr_hides_the_token() -> None:
    assert "token-secret" not in repr(token("secret"))


# ------------------------------------------------------------------ process byte budget


def test_bytes_are_counted_and_given_back() -> None:
    budget = ByteBudget(10_000_000)
    cache = TokenCache(budget=budget)
    cache.put(key("r", "a"), token("a"), GEN)
    cache.put(key("r", "b"), token("b"), GEN)
    expected = entry_size(key("r", "a"), token("a")) + entry_size(key("r", "b"), token("b"))
    assert cache.bytes == budget.used == expected
    cache.put(key("r", "a"), token("a2"), GEN)  # replacing an entry does not count it twice
    assert budget.used == entry_size(key("r", "a"), token("a2")) + entry_size(
        key("r", "b"), token("b")
    )
    cache.drop_role("r")
    assert cache.bytes == budget.used == 0
    cache.put(key("r", "a"), token("a"), GEN)
    cache.clear()
    assert budget.used == 0
    cache.put(key("r", "a"), token("a", lifetime=1), GEN)
    assert cache.get(key("r", "a"), min_remaining=0, now=NOW + 5) is None  # expired: removed
    assert budget.used == 0


def test_the_byte_budget_is_shared_by_every_mount_of_the_process() -> None:
    size = entry_size(key("r", "0000"), token("0000"))
    budget = ByteBudget(10 * size)
    busy, quiet = TokenCache(budget=budget), TokenCache(budget=budget)
    for index in range(3):
        quiet.put(key("r", f"{index:04d}"), token(f"{index:04d}"), GEN)
    for index in range(100):
        busy.put(key("r", f"{index:04d}"), token(f"{index:04d}"), GEN)
        assert budget.used <= budget.max_bytes
    # The busy mount paid for its own growth: the quiet mount kept its tokens, and the busy
    # one kept its most recent ones.
    assert len(quiet) == 3
    assert len(busy) == 7
    assert busy.get(key("r", "0099"), min_remaining=0, now=NOW) is not None
    assert busy.get(key("r", "0092"), min_remaining=0, now=NOW) is None
    assert busy.evictions == 93


def test_process_budget_is_one_per_size() -> None:
    assert process_budget(12345) is process_budget(12345)
    assert process_budget(12345) is not process_budget(54321)
    with pytest.raises(ValueError, match="max_bytes"):
        ByteBudget(0)


async def test_a_flight_is_shared_only_within_a_generation() -> None:
    cache = TokenCache()
    gate = asyncio.Event()
    minted: list[str] = []

    def mint_as(name: str) -> Callable[[], Awaitable[IssuedToken]]:
        async def mint() -> IssuedToken:
            minted.append(name)
            await gate.wait()
            return token(name)

        return mint

    old = asyncio.create_task(cache.single_flight(key(), mint_as("old"), (1, 1)))
    await asyncio.sleep(0)
    new = asyncio.create_task(cache.single_flight(key(), mint_as("new"), (1, 2)))
    same = asyncio.create_task(cache.single_flight(key(), mint_as("again"), (1, 2)))
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(old, new, same)
    assert [(r[0].access_token, r[1]) for r in results] == [
        ("token-old", False),
        ("token-new", False),
        ("token-new", True),
    ]
    assert minted == ["old", "new"]
