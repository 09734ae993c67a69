"""Retry classes, backoff bounds, Retry-After parsing and the rate-limit buckets, as units."""

import asyncio
import email.utils
import random

import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdistill.generate.teachers import TeacherError
from kdistill.generate.teachers.limits import TokenBucket
from kdistill.generate.teachers.retry import RetryPolicy, classify, retry_after_seconds

REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def _status_error(code: int, headers: dict | None = None) -> openai.APIStatusError:
    response = httpx2.Response(code, headers=headers or {}, request=REQUEST)
    return openai.AsyncOpenAI(api_key="x", base_url="http://127.0.0.1/v1")._make_status_error(
        f"Error code: {code}", body=None, response=response
    )


@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retried(code):
    failure = classify(_status_error(code))
    assert (failure.code, failure.retryable, failure.fatal) == (f"http_{code}", True, False)


@pytest.mark.parametrize("code", [400, 403, 404, 422, 451])
def test_client_errors_are_not_retried(code):
    failure = classify(_status_error(code))
    assert (failure.code, failure.retryable, failure.fatal) == (f"http_{code}", False, False)


def test_401_is_fatal_and_connection_errors_are_retried():
    assert (classify(_status_error(401)).retryable, classify(_status_error(401)).fatal) == (False, True)
    assert classify(openai.APITimeoutError(request=REQUEST)).code == "timeout"
    conn = classify(openai.APIConnectionError(request=REQUEST))
    assert (conn.code, conn.retryable) == ("connection_error", True)
    assert classify(TeacherError("no template")).retryable is False
    assert classify(ZeroDivisionError()) is None  # a bug is not a teacher failure: it must raise


def test_retry_after_header_forms():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "1.5", "retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now=1_000_000) == pytest.approx(30)
    assert classify(_status_error(429, {"Retry-After": "7"})).retry_after == 7.0


@given(attempt=st.integers(1, 30), seed=st.integers(0, 2**32))
def test_backoff_is_jittered_exponential_and_capped(attempt, seed):
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=30.0)
    delay = policy.delay(attempt, None, random.Random(seed))
    ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
    assert ceiling / 2 <= delay <= ceiling


def test_retry_after_is_honoured_up_to_the_cap():
    policy = RetryPolicy(retry_after_cap_s=10.0)
    rng = random.Random(0)
    assert policy.delay(1, 3.0, rng) == 3.0
    assert policy.delay(1, 3600.0, rng) == 10.0


def test_token_bucket_spreads_requests_at_the_rate():
    clock = [0.0]

    async def scenario():
        bucket = TokenBucket(600, clock=lambda: clock[0])  # 10 per second, holds 10
        real_sleep = asyncio.sleep

        async def fake_sleep(seconds):
            clock[0] += seconds
            await real_sleep(0)

        asyncio.sleep = fake_sleep
        try:
            for _ in range(30):
                await bucket.take(1)
        finally:
            asyncio.sleep = real_sleep
        return clock[0]

    assert asyncio.run(scenario()) == pytest.approx(2.0)  # 10 at once, then 20 more at 10/s


def test_token_bucket_settles_estimates_and_allows_oversized_requests():
    clock = [0.0]
    bucket = TokenBucket(60, clock=lambda: clock[0])  # 1 per second, holds 1
    asyncio.run(bucket.take(5))  # larger than the bucket: taken from a full bucket, into debt
    assert bucket.level == pytest.approx(-4)
    bucket.settle(3)  # the request used 2, not 5
    assert bucket.level == pytest.approx(-1)
    clock[0] += 2.0
    bucket.settle(0)
    assert bucket.level == pytest.approx(1)
