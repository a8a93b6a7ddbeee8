"""Token reuse and coalescing: one mount's memory of the tokens it minted.

A token is kept per (role, canonical ctx) and served again while it stays valid for at
least the role's minimum remaining lifetime. Concurrent misses for one key share a single
upstream call; its failure reaches every waiter and is not remembered.

Memory is bounded twice, because per-user ctx values can be high-cardinality: an LRU cap on
entries per mount, and a byte budget shared by every mount of the process
(:class:`ByteBudget`). Past the budget, the least recently used token of the mount holding
the most bytes goes first, so one busy mount cannot flush the others' tokens.

Every entry records the *generation* of the config and role it was minted under. Writes
bump generations, so a token minted while a write was in flight is never stored, and a
rotated credential never serves a token minted with the old one once the write returns.
Mints under way are keyed by generation too: a read that starts after a write never joins
a mint that loaded the config or role before it.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .engine_env import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES
from .responses import IssuedToken

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "ByteBudget", "TokenCache"]

ENTRY_OVERHEAD = 512
"""Bytes counted per entry beyond its strings: the objects, the dict and LRU slots."""

CacheKey = tuple[str, str]
"""(role name, canonical ctx)."""
Generation = tuple[int, int]
"""(config generation, role generation)."""


class ByteBudget:
    """The bytes every token cache of the process may hold together."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes
        self.used = 0
        self._caches: weakref.WeakSet[TokenCache] = weakref.WeakSet()

    def join(self, cache: TokenCache) -> None:
        """Count ``cache``'s entries against this budget."""
        self._caches.add(cache)

    def charge(self, size: int) -> None:
        """Add ``size`` bytes, then evict until the total fits again."""
        self.used += size
        while self.used > self.max_bytes:
            victim = max(self._caches, key=lambda cache: cache.bytes, default=None)
            if victim is None or not victim.evict_oldest():
                break

    def release(self, size: int) -> None:
        """Give back ``size`` bytes."""
        self.used -= size


@functools.cache
def process_budget(max_bytes: int = DEFAULT_MAX_BYTES) -> ByteBudget:
    """The byte budget shared by every mount of the process (one per configured size)."""
    return ByteBudget(max_bytes)


def entry_size(key: CacheKey, token: IssuedToken) -> int:
    """The bytes an entry is counted for: its strings plus a fixed overhead."""
    return (
        len(key[0]) + len(key[1]) + len(token.access_token) + len(token.token_type)
    ) + ENTRY_OVERHEAD


@dataclass(frozen=True)
class CachedToken:
    """A token and the generation it was minted under."""

    token: IssuedToken
    generation: Generation
    size: int = 0


class TokenCache:
    """An LRU map of tokens with single-flight minting per key."""

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, budget: ByteBudget | None = None
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.budget = budget if budget is not None else ByteBudget()
        self.budget.join(self)
        self.bytes = 0
        self._entries: OrderedDict[CacheKey, CachedToken] = OrderedDict()
        self._inflight: dict[tuple[CacheKey, Generation], asyncio.Future[IssuedToken]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, key: CacheKey, *, min_remaining: float, now: float | None = None
    ) -> IssuedToken | None:
        """The token for ``key`` if it stays valid for at least ``min_remaining`` seconds."""
        cached = self._entries.get(key)
        if cached is None:
            return None
        remaining = cached.token.expires_at - (time.time() if now is None else now)
        if remaining <= 0:
            self._remove(key)
            return None
        if remaining < min_remaining:
            return None
        self._entries.move_to_end(key)
        return cached.token

    def get_valid(self, key: CacheKey, *, now: float | None = None) -> IssuedToken | None:
        """The token for ``key`` if it has not expired, however little time it has left
        (served while Skyflow is down)."""
        return self.get(key, min_remaining=1.0, now=now)

    def put(self, key: CacheKey, token: IssuedToken, generation: Generation) -> None:
        """Remember a token, evicting the least recently used beyond the entry cap and
        beyond the process's byte budget."""
        self._remove(key)
        size = entry_size(key, token)
        self._entries[key] = CachedToken(token, generation, size)
        self.bytes += size
        while len(self._entries) > self.max_entries:
            self.evict_oldest()
        self.budget.charge(size)

    def evict_oldest(self) -> bool:
        """Drop the least recently used token; ``False`` when there is none."""
        if not self._entries:
            return False
        key = next(iter(self._entries))
        self._remove(key)
        self.evictions += 1
        return True

    def _remove(self, key: CacheKey) -> None:
        cached = self._entries.pop(key, None)
        if cached is not None:
            self.bytes -= cached.size
            self.budget.release(cached.size)

    def drop_role(self, role: str) -> None:
        """Forget every token of ``role``, and let no later read join a mint for it that
        started before now (it may use the old role IDs)."""
        for key in [k for k in self._entries if k[0] == role]:
            self._remove(key)
        for flight in [f for f in self._inflight if f[0][0] == role]:
            del self._inflight[flight]

    def clear(self) -> None:
        """Forget every token and every mint under way (see :meth:`drop_role`)."""
        for key in list(self._entries):
            self._remove(key)
        self._inflight.clear()

    async def single_flight(
        self,
        key: CacheKey,
        mint: Callable[[], Awaitable[IssuedToken]],
        generation: Generation = (0, 0),
    ) -> tuple[IssuedToken, bool]:
        """Run ``mint`` for ``key`` unless a call for it, under the same ``generation``, is
        already running; then share its result. Returns ``(token, joined)`` where ``joined``
        says another call did the work.

        ``generation`` is the one the caller took before loading what ``mint`` uses: a
        caller that started after a write never joins a mint that loaded the state before.
        The shared call is shielded: one caller giving up (its request was cancelled) does
        not cancel the call the others wait for.
        """
        flight = (key, generation)
        running = self._inflight.get(flight)
        if running is not None:
            return await asyncio.shield(running), True
        future: asyncio.Future[IssuedToken] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future

        async def run() -> None:
            try:
                future.set_result(await mint())
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:  # delivered to every waiter, then forgotten
                future.set_exception(exc)
            finally:
                if self._inflight.get(flight) is future:  # not a newer flight for the key
                    del self._inflight[flight]

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Nobody may be left to retrieve a failure (all callers cancelled): mark it seen.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(future), False

    async def aclose(self) -> None:
        """Cancel minting still under way (the mount is going away)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
