"""Several servers of one teacher as one `Teacher`: least-outstanding dispatch, health, failover.

`EndpointPool` holds one `OpenAIEndpointTeacher` per server (replicas of the same model: vLLM, llama.cpp,
... behind different URLs) and sends each request to the server that has the fewest outstanding
requests relative to its weight (`outstanding / weight`; ties go to the one that was sent fewest
requests, so idle servers all get work). A server that has `concurrency` requests in flight takes no
more: the request waits for a free slot on any healthy server. That keeps the queue on our side, where a
request can still go to whichever server frees up first, instead of in one server's waiting queue.

**Health.** A server that stops answering is taken out of rotation: at once on a connection error (no
one is listening, or the connection was cut), after `failures_to_eject` consecutive timeouts or 5xx
answers otherwise. It stays out for a backoff that doubles with each ejection in a row (`backoff_s`,
`2 * backoff_s`, ... up to `max_backoff_s`), then one request probes it: an answer brings it back (and
resets the backoff), a failure ejects it again. Any answer from a server counts as a sign of life.

**Failover.** A request that fails on a server with one of those failures is sent at once to another
server it has not tried yet; nothing waits for the run's retry backoff while a healthy server is left.
When none is left (every server out of rotation, or all tried), the last server's error is raised
unchanged, so the run's retry policy (`teachers/retry.py`) and its error records treat it exactly as the
failure of a single dead endpoint: the records are retried after the backoff, and after
`retry.max_attempts` they go to errors.jsonl and the run exits with records missing. Other failures
(429, 4xx, a 401) are not the server's health and are raised at once for the run's policy to handle.
A request is never lost by the pool: it either returns one response or raises, and the run commits
each record at most once (the store's guarantee), whichever server answered.

**Identity.** Record ids must not depend on which server answered, nor on how many servers a run had
(adding a server to a run being resumed must not ask again for what is done), so the pool's `identity`
is its members' identity without `base_url`: kind, model, API style (and the rendering when prompts are
rendered here). All members must agree on it. A run with one server keeps `OpenAIEndpointTeacher`'s
identity, URL included, so existing output directories keep their record ids.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdistill.generate.teachers import CompletionRequest, Teacher, TeacherResponse
from kdistill.generate.teachers.retry import Failure, classify

#: seconds over which an endpoint's answer rate is measured (the progress display's req/s)
RATE_WINDOW_S = 10.0


@dataclass(frozen=True)
class PoolMember:
    """One server of the pool: its teacher, its concurrency cap (None: no cap) and weight."""

    teacher: Teacher
    concurrency: int | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class EndpointStatus:
    """A snapshot of one endpoint for progress displays and the run summary."""

    url: str
    state: str  # "up" | "down" (out of rotation) | "probing" (one request is testing it)
    outstanding: int
    concurrency: int | None
    weight: float
    sent: int  # requests sent, probes included
    answered: int
    failed: int  # requests that failed with a health failure (connection, timeout, 5xx)
    rate: float  # answers per second over the last RATE_WINDOW_S seconds
    ejections: int  # times taken out of rotation
    retry_in_s: float | None  # seconds until the next probe (down only)


@dataclass
class _Endpoint:
    member: PoolMember
    url: str
    outstanding: int = 0
    sent: int = 0
    answered: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    ejections: int = 0
    ejections_in_a_row: int = 0
    down_until: float | None = None  # None: in rotation
    probing: bool = False
    last_error: BaseException | None = None
    answers: deque[float] = field(default_factory=deque)

    def has_room(self) -> bool:
        cap = self.member.concurrency
        return cap is None or self.outstanding < cap


class EndpointPool:
    """A `Teacher` over several replicas of one OpenAI-compatible teacher (module docstring)."""

    def __init__(
        self,
        members: Sequence[PoolMember],
        *,
        failures_to_eject: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(members) < 1:
            raise ValueError("an endpoint pool needs at least one member")
        if failures_to_eject < 1 or backoff_s <= 0 or max_backoff_s < backoff_s:
            raise ValueError("failures_to_eject >= 1 and 0 < backoff_s <= max_backoff_s expected")
        for m in members:
            if m.weight <= 0 or (m.concurrency is not None and m.concurrency < 1):
                raise ValueError(
                    f"{m.teacher.identity.get('base_url')}: weight > 0 and concurrency >= 1 expected"
                )
        identities = [pool_identity(m.teacher.identity) for m in members]
        if any(i != identities[0] for i in identities[1:]):
            raise ValueError(
                "the endpoints of a pool must serve the same teacher (model, api, rendering); got "
                + "; ".join(sorted({str(i) for i in identities}))
            )
        self.identity: dict[str, Any] = identities[0]
        self.rendering: dict[str, Any] | None = getattr(members[0].teacher, "rendering", None)
        caps = [m.concurrency for m in members]
        self.max_in_flight: int | None = None if None in caps else sum(caps)  # type: ignore[arg-type]
        self.failures_to_eject = failures_to_eject
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._endpoints = [
            _Endpoint(m, str(m.teacher.identity.get("base_url", f"#{n}"))) for n, m in enumerate(members)
        ]
        self._freed = asyncio.Event()  # set (and replaced) whenever a slot is freed or health changes

    # -- the Teacher protocol

    async def complete(self, request: CompletionRequest) -> TeacherResponse:
        """Send `request` to the least loaded healthy endpoint; fail over to others on health failures."""
        tried: set[int] = set()
        last: BaseException | None = None
        while True:
            n = await self._acquire(tried)
            if n is None:
                raise self._exhausted(last)
            endpoint = self._endpoints[n]
            try:
                response = await endpoint.member.teacher.complete(request)
            except Exception as err:
                failure = classify(err)
                if failure is None or not is_health_failure(failure):
                    self._release(n, answered=False)
                    raise
                self._release(n, answered=False, health_error=err, failure=failure)
                tried.add(n)
                last = err
                continue
            except BaseException:  # cancelled: the slot is free again, the endpoint is not to blame
                self._release(n, answered=False)
                raise
            self._release(n, answered=True)
            return response

    async def aclose(self) -> None:
        await asyncio.gather(*(e.member.teacher.aclose() for e in self._endpoints))

    # -- what progress displays read

    def endpoint_status(self) -> list[EndpointStatus]:
        now = self._clock()
        out = []
        for e in self._endpoints:
            while e.answers and e.answers[0] < now - RATE_WINDOW_S:
                e.answers.popleft()
            state = "up" if e.down_until is None else ("probing" if e.probing else "down")
            out.append(
                EndpointStatus(
                    url=e.url,
                    state=state,
                    outstanding=e.outstanding,
                    concurrency=e.member.concurrency,
                    weight=e.member.weight,
                    sent=e.sent,
                    answered=e.answered,
                    failed=e.failed,
                    rate=len(e.answers) / RATE_WINDOW_S,
                    ejections=e.ejections,
                    retry_in_s=None if e.down_until is None else max(e.down_until - now, 0.0),
                )
            )
        return out

    # -- dispatch

    async def _acquire(self, tried: set[int]) -> int | None:
        """The index of the endpoint to send to (its slot taken), waiting for a free slot if need be;
        None when no endpoint is left to try (all tried, or out of rotation and not due for a probe).

        No await between looking and taking: on one event loop, no other request can take the slot."""
        while True:
            now = self._clock()
            untried = [e for n, e in enumerate(self._endpoints) if n not in tried]
            due = [e for e in untried if e.down_until is not None and not e.probing and now >= e.down_until]
            if due:  # a recovered server comes back as soon as its backoff is over
                endpoint = min(due, key=lambda e: e.down_until or 0.0)
                endpoint.probing = True
                return self._take(endpoint)
            healthy = [e for e in untried if e.down_until is None]
            if not healthy:
                return None
            free = [e for e in healthy if e.has_room()]
            if free:
                # least outstanding relative to weight; ties to the least used, then the first listed
                return self._take(min(free, key=lambda e: (e.outstanding / e.member.weight, e.sent)))
            # every healthy endpoint is full: wait for a slot, or for a probe to come due
            freed = self._freed
            try:
                await asyncio.wait_for(freed.wait(), timeout=self._next_probe_in(now))
            except TimeoutError:
                pass

    def _take(self, endpoint: _Endpoint) -> int:
        endpoint.outstanding += 1
        endpoint.sent += 1
        return self._endpoints.index(endpoint)

    def _next_probe_in(self, now: float) -> float | None:
        waits = [e.down_until - now for e in self._endpoints if e.down_until is not None and not e.probing]
        return max(min(waits), 0.0) + 1e-3 if waits else None

    def _release(
        self,
        n: int,
        *,
        answered: bool,
        health_error: BaseException | None = None,
        failure: Failure | None = None,
    ) -> None:
        e = self._endpoints[n]
        e.outstanding -= 1
        was_probe, e.probing = e.probing, False  # a probe ended otherwise (429, cancelled): probe again
        now = self._clock()
        if answered:  # any answer is a sign of life
            e.answered += 1
            e.answers.append(now)
            while e.answers[0] < now - RATE_WINDOW_S:  # only the window is kept
                e.answers.popleft()
            e.consecutive_failures = 0
            e.ejections_in_a_row = 0
            e.down_until = None
        elif health_error is not None and failure is not None:
            e.failed += 1
            e.consecutive_failures += 1
            e.last_error = health_error
            eject = (
                was_probe
                or failure.code == "connection_error"
                or e.consecutive_failures >= self.failures_to_eject
            )
            # a request sent before the ejection that fails after it does not lengthen the backoff
            if eject and (e.down_until is None or was_probe):
                e.ejections += 1
                e.ejections_in_a_row += 1
                backoff = min(self.backoff_s * 2 ** (e.ejections_in_a_row - 1), self.max_backoff_s)
                e.down_until = now + backoff
        # wake every waiting request to look again (each waits on the event of its time)
        self._freed.set()
        self._freed = asyncio.Event()

    def _exhausted(self, last: BaseException | None) -> BaseException:
        """What a request raises when no endpoint is left: the last error seen, as a dead server's."""
        if last is None:
            errors = [e.last_error for e in self._endpoints if e.last_error is not None]
            last = errors[-1] if errors else None
        if last is None:  # cannot happen: an endpoint is only out of rotation after an error
            from kdistill.generate.teachers import TeacherError

            return TeacherError("no endpoint of the pool is in rotation")
        return last.with_traceback(None)


def pool_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """A member's identity without its URL: what a pool's records are identified by (module docstring)."""
    return {k: v for k, v in identity.items() if k != "base_url"}


def is_health_failure(failure: Failure) -> bool:
    """Whether a failure says the server is unwell (no connection, a timeout, a 5xx), not the request."""
    if failure.code in ("connection_error", "timeout"):
        return True
    return failure.code.startswith("http_") and failure.code[5:].isdigit() and int(failure.code[5:]) >= 500


__all__ = ["EndpointPool", "EndpointStatus", "PoolMember", "is_health_failure", "pool_identity"]
