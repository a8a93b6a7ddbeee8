"""Token reuse and coalescing: one mount's memory of the tokens it minted.

A token is kept per (role, canonical ctx) and served again while it stays valid for at
least the role's minimum remaining lifetime. Concurrent misses for one key share a single
upstream call; its failure reaches every waiter and is not remembered. Memory is bounded by
an LRU cap, because per-user ctx values can be high-cardinality.

Every entry records the *generation* of the config and role it was minted under. Writes
bump generations, so a token minted while a write was in flight is never stored, and a
rotated credential never serves a token minted with the old one once the write returns.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .client import IssuedToken

DEFAULT_MAX_ENTRIES = 10_000

CacheKey = tuple[str, str]
"""(role name, canonical ctx)."""


@dataclass(frozen=True)
class CachedToken:
    """A token and the generation it was minted under."""

    token: IssuedToken
    generation: tuple[int, int]


class TokenCache:
    """An LRU map of tokens with single-flight minting per key."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, CachedToken] = OrderedDict()
        self._inflight: dict[CacheKey, asyncio.Future[IssuedToken]] = {}
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
            del self._entries[key]
            return None
        if remaining < min_remaining:
            return None
        self._entries.move_to_end(key)
        return cached.token

    def get_valid(self, key: CacheKey, *, now: float | None = None) -> IssuedToken | None:
        """The token for ``key`` if it has not expired, however little time it has left
        (served while Skyflow is down)."""
        return self.get(key, min_remaining=1.0, now=now)

    def put(self, key: CacheKey, token: IssuedToken, generation: tuple[int, int]) -> None:
        """Remember a token, evicting the least recently used beyond the cap."""
        self._entries[key] = CachedToken(token, generation)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def drop_role(self, role: str) -> None:
        """Forget every token of ``role``, and let no later read join a mint for it that
        started before now (it may use the old role IDs)."""
        for key in [k for k in self._entries if k[0] == role]:
            del self._entries[key]
        for key in [k for k in self._inflight if k[0] == role]:
            del self._inflight[key]

    def clear(self) -> None:
        """Forget every token and every mint under way (see :meth:`drop_role`)."""
        self._entries.clear()
        self._inflight.clear()

    async def single_flight(
        self, key: CacheKey, mint: Callable[[], Awaitable[IssuedToken]]
    ) -> tuple[IssuedToken, bool]:
        """Run ``mint`` for ``key`` unless a call for it is already running; then share its
        result. Returns ``(token, joined)`` where ``joined`` says another call did the work.

        The shared call is shielded: one caller giving up (its request was cancelled) does
        not cancel the call the others wait for.
        """
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running), True
        future: asyncio.Future[IssuedToken] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future

        async def run() -> None:
            try:
                future.set_result(await mint())
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:  # delivered to every waiter, then forgotten
                future.set_exception(exc)
            finally:
                if self._inflight.get(key) is future:  # not a newer flight for the key
                    del self._inflight[key]

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
