"""Pure retry decisions: whether a failed attempt is retried and after how long.

Follows the gateway's own hints first (``x-should-retry``, ``retry-after-ms``, ``retry-after``),
then status classes (408, 409, 429, every 5xx but 501 and 505) and transport failures, with capped
exponential back-off and full jitter. Nothing here sleeps or does I/O, so tests drive it directly.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MAX_RETRIES = 4
#: What an older Bifrost (no status for it: 400 on the Anthropic route) says when its provider
#: queue is full and drop_excess_requests is on.
QUEUE_FULL = "request dropped: queue is full"
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_MAX_S = 30.0
#: A server asking for a longer pause than this is obeyed only up to it, so one bad header
#: cannot park a request for hours.
DEFAULT_MAX_RETRY_AFTER_S = 120.0

RETRYABLE_STATUS = frozenset({408, 409, 429})
#: 5xx that say the request itself can never succeed; every other 5xx (a proxy's 520, 529
#: overloaded, ...) is retried.
PERMANENT_5XX = frozenset({501, 505})
#: Error types inside a 200 stream that another attempt cannot fix: the request itself is
#: wrong. Every other type is retried: the request was accepted and then broke, and gateways
#: do not always name why (some Bifrost revisions send ``"type": "error"`` or ``""`` for an
#: overload).
PERMANENT_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "billing_error",
        # ours: an answer we cannot read (another attempt would be paid for and read the
        # same), and an async-job stub where the answer itself was wanted
        "invalid_response",
        "unexpected_job_stub",
    }
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times and how patiently to retry.

    :param max_retries: retries after the first attempt (0 disables retries).
    :param backoff_base_s: first back-off ceiling; doubles each retry.
    :param backoff_max_s: back-off ceiling.
    :param max_retry_after_s: cap on a server-requested pause.
    :param retry_timeouts: whether our own timeouts are retried (a stalled gateway may recover).
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    retry_timeouts: bool = True

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("back-off durations must be >= 0")


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``retry-after``.

    ``retry-after`` may be delta-seconds (possibly fractional) or an HTTP date.

    :param headers: response headers (case-insensitive mapping, or lower-case keys).
    :param now: current epoch seconds, for HTTP-date values (injected for tests).
    :return: a non-negative delay, or ``None`` when absent or unparseable.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if value >= 0 else None


def backoff_s(policy: RetryPolicy, retry_number: int, rng: random.Random | None = None) -> float:
    """Full-jitter exponential back-off for the ``retry_number``-th retry (1-based)."""
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * (2 ** max(0, retry_number - 1)))
    return (rng or random).uniform(0.0, ceiling)


def retry_delay(
    policy: RetryPolicy,
    *,
    attempts_done: int,
    http_status: int | None,
    error_type: str | None,
    headers: Mapping[str, str] | None = None,
    transport_failure: bool = False,
    timed_out: bool = False,
    rng: random.Random | None = None,
    now: float | None = None,
    error_message: str | None = None,
) -> float | None:
    """Decide whether to retry a failed attempt.

    :param attempts_done: attempts made so far, including the failed one (>= 1).
    :param http_status: the response status, or ``None`` when no response arrived.
    :param error_type: the Anthropic ``error.type`` (from a body or a stream ``error`` event).
    :param headers: response headers, for server hints.
    :param transport_failure: the connection failed or dropped (no usable response).
    :param timed_out: our own deadline passed.
    :param error_message: the error's text (:data:`QUEUE_FULL` on a 400 is retried).
    :return: seconds to wait before the next attempt, or ``None`` for "do not retry".
    """
    if attempts_done > policy.max_retries:
        return None
    headers = headers or {}
    should = headers.get("x-should-retry")
    if should == "false":
        return None
    if timed_out:
        retryable = policy.retry_timeouts
    elif transport_failure:
        retryable = True
    elif http_status is not None and http_status >= 400:
        retryable = (
            http_status in RETRYABLE_STATUS
            or (http_status >= 500 and http_status not in PERMANENT_5XX)
            or should == "true"
            # An older Bifrost's full provider queue (newer ones answer 503): nothing went
            # upstream, and the queue drains.
            or (http_status == 400 and error_message is not None and QUEUE_FULL in error_message)
        )
    elif http_status is None or 200 <= http_status < 300:
        # A 200 that failed later (stream error event, truncated stream, unreadable body).
        retryable = error_type not in PERMANENT_ERROR_TYPES
    else:
        retryable = False  # 1xx/3xx: redirects are not followed, and asking again changes nothing
    if not retryable:
        return None
    hinted = parse_retry_after(headers, now=now)
    if hinted is not None:
        return min(hinted, policy.max_retry_after_s)
    return backoff_s(policy, attempts_done, rng)
