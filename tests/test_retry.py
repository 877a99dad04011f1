from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from batchrunner.retry import RetryPolicy, backoff_s, parse_retry_after, retry_delay

POLICY = RetryPolicy(max_retries=3, backoff_base_s=0.5, backoff_max_s=4.0)


def decide(**kw):
    kw.setdefault("attempts_done", 1)
    kw.setdefault("http_status", None)
    kw.setdefault("error_type", None)
    return retry_delay(POLICY, rng=random.Random(1), **kw)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_retryable_statuses_are_retried(status):
    assert decide(http_status=status, error_type="x") is not None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_request_errors_are_never_retried(status):
    assert decide(http_status=status, error_type="invalid_request_error") is None


def test_retry_after_seconds_and_ms_are_obeyed():
    assert decide(http_status=429, headers={"retry-after": "7"}) == 7.0
    assert decide(http_status=429, headers={"retry-after": "1.5"}) == 1.5
    # retry-after-ms wins: it is the more precise of the two (Anthropic SDK behaviour)
    assert decide(http_status=529, headers={"retry-after-ms": "250", "retry-after": "9"}) == 0.25


def test_retry_after_http_date():
    now = 1_000_000.0
    when = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert parse_retry_after({"retry-after": when}, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"retry-after": "garbage"}) is None
    assert parse_retry_after({"retry-after": "-3"}) is None
    assert parse_retry_after({}) is None


def test_retry_after_is_capped():
    policy = RetryPolicy(max_retry_after_s=10)
    assert (
        retry_delay(
            policy,
            attempts_done=1,
            http_status=429,
            error_type=None,
            headers={"retry-after": "3600"},
        )
        == 10
    )


def test_attempt_budget():
    assert decide(attempts_done=3, http_status=500) is not None
    assert decide(attempts_done=4, http_status=500) is None
    assert (
        retry_delay(RetryPolicy(max_retries=0), attempts_done=1, http_status=500, error_type=None)
        is None
    )


def test_x_should_retry_header_overrides_status():
    assert decide(http_status=500, headers={"x-should-retry": "false"}) is None
    assert decide(http_status=400, headers={"x-should-retry": "true"}) is not None


def test_transport_failures_and_timeouts():
    assert decide(transport_failure=True) is not None
    assert decide(timed_out=True) is not None
    no_timeouts = RetryPolicy(retry_timeouts=False)
    assert (
        retry_delay(no_timeouts, attempts_done=1, http_status=None, error_type=None, timed_out=True)
        is None
    )


def test_stream_error_events_retry_unless_they_blame_the_request():
    assert decide(http_status=200, error_type="overloaded_error") is not None
    # some Bifrost revisions name every mid-stream failure "error", or leave the type empty
    assert decide(http_status=200, error_type="error") is not None
    assert decide(http_status=200, error_type="stream_error") is not None
    assert decide(http_status=200, error_type="invalid_request_error") is None
    assert decide(http_status=200, error_type="authentication_error") is None


def test_every_5xx_but_the_permanent_ones_is_retried():
    for status in (500, 502, 503, 504, 520, 529, 599):
        assert decide(http_status=status, error_type=None) is not None, status
    for status in (501, 505, 400, 401, 404, 413, 422, 301, 302, 307):
        assert decide(http_status=status, error_type=None) is None, status


def test_backoff_is_capped_exponential_with_jitter():
    rng = random.Random(0)
    for retry in range(1, 10):
        ceiling = min(4.0, 0.5 * 2 ** (retry - 1))
        values = [backoff_s(POLICY, retry, rng) for _ in range(200)]
        assert all(0 <= v <= ceiling for v in values)
        assert max(values) > ceiling * 0.8  # jitter spans the range


def test_policy_rejects_negative_values():
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)


def test_an_older_bifrost_s_full_queue_is_retried_other_400s_are_not():
    # Its 400 "request dropped: queue is full" (newer cores answer 503) was never retried: an
    # error row for a request that nothing had sent upstream, in every load test against it.
    full = "request dropped: queue is full"
    assert decide(http_status=400, error_type=None, error_message=full) is not None
    assert decide(http_status=400, error_type="invalid_request_error",
                  error_message="max_tokens: field required") is None
    assert decide(http_status=404, error_type=None, error_message=full) is None
