"""Which teacher failures are retried, and how long to wait before the next attempt.

Retried: connection errors, timeouts, HTTP 408, 409, 429 and every 5xx. Not retried: every other 4xx
(400, 403, 404, 422, ...); 401 additionally stops the whole run, because a bad key fails every request.
The wait is exponential with "equal jitter" (uniform in [d/2, d] for d = base * 2^(attempt-1), capped),
so a burst of failures spreads out but never retries immediately; a `Retry-After` (or `retry-after-ms`)
header from the server replaces it, honoured up to `retry_after_cap_s`.

The openai client is built with `max_retries=0` so that these classes are exactly the ones applied.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any

RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every status >= 500


@dataclass(frozen=True)
class Failure:
    """A classified teacher failure. `code` is what errors.jsonl records (e.g. "http_429", "timeout")."""

    code: str
    retryable: bool
    fatal: bool = False  # stops the run (401)
    retry_after: float | None = None  # seconds the server asked us to wait
    message: str = ""
    url: str | None = None  # the request's URL (no credentials, no query): which server of a pool


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6  # attempts in all, the first included
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    retry_after_cap_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap_s)
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return rng.uniform(ceiling / 2, ceiling)


def classify(err: BaseException) -> Failure | None:
    """Map an exception from a teacher to a `Failure`; None for anything else (a bug: let it raise)."""
    import openai

    from kdistill.generate.teachers import TeacherError

    if isinstance(err, openai.APITimeoutError):
        return Failure("timeout", retryable=True, message="request timed out", url=_url_of(err))
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__
        detail = f": {type(cause).__name__}" if cause is not None else ""
        return Failure(
            "connection_error", retryable=True, message=f"connection error{detail}", url=_url_of(err)
        )
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        retryable = status in RETRYABLE_STATUS or status >= 500
        return Failure(
            f"http_{status}",
            retryable=retryable,
            fatal=status == 401,
            retry_after=retry_after_seconds(err.response.headers) if retryable else None,
            message=_short(str(err)),
            url=_url_of(err),
        )
    if isinstance(err, TeacherError):
        return Failure("teacher_error", retryable=False, message=_short(str(err)))
    return None


def _url_of(err: Any) -> str | None:
    """The URL an openai error's request went to, fit to be written down (no credentials, no query)."""
    from kdistill.generate.teachers.openai_endpoint import public_url

    try:
        return public_url(str(err.request.url))
    except (AttributeError, RuntimeError):  # an error built without a request (tests): no URL to name
        return None


def retry_after_seconds(headers: Any, now: float | None = None) -> float | None:
    """Seconds from `retry-after-ms`, or `retry-after` as seconds or an HTTP date; None if absent/invalid."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
