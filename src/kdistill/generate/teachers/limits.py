"""Client-side rate limits: requests per minute and tokens per minute, as token buckets.

A bucket refills continuously at `per_minute / 60` units per second and holds at most one second's worth
(at least one request), so the rate is smooth rather than a burst at the top of each minute. Tokens are
not known before the answer: a request reserves an estimate (prompt characters / 4 + max_tokens * n) and
the difference to the usage the server reports is settled afterwards, which may leave the bucket in debt
(later requests then wait longer). A request larger than the bucket waits for a full bucket and goes into
debt rather than waiting forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0  # units per second
        self.capacity = max(self.rate, 1.0)
        self.level = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._lock = asyncio.Lock()  # first come, first served

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, amount: float) -> None:
        """Wait until `amount` units are available, then take them."""
        async with self._lock:
            need = min(amount, self.capacity)
            while True:
                self._refill()
                if self.level >= need - 1e-9:  # (float refills land a hair short)
                    self.level -= amount  # the part above capacity becomes debt
                    return
                # short naps: a settle() by a finished request may refill the bucket sooner
                await asyncio.sleep(min(max((need - self.level) / self.rate, 1e-3), 0.05))

    def settle(self, delta: float) -> None:
        """Give back (delta > 0) or charge (delta < 0) units after the fact."""
        self._refill()
        self.level = min(self.capacity, self.level + delta)


class RateLimiter:
    """Both limits of a run; either may be None (no limit)."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self.requests = TokenBucket(requests_per_minute) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute) if tokens_per_minute else None

    async def acquire(self, estimated_tokens: int) -> None:
        if self.requests is not None:
            await self.requests.take(1)
        if self.tokens is not None:
            await self.tokens.take(estimated_tokens)

    def settle_tokens(self, estimated_tokens: int, used_tokens: int | None) -> None:
        if self.tokens is not None and used_tokens is not None:
            self.tokens.settle(estimated_tokens - used_tokens)


def estimate_tokens(prompt_chars: int, max_tokens: int, n: int) -> int:
    """A rough upper estimate of a request's tokens (4 characters per token is typical for English BPE)."""
    return prompt_chars // 4 + 1 + max_tokens * n
