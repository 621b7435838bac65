"""What a response says about its website: Retry-After, backoff arithmetic, the kind of signal.

Pure functions, no I/O. The cluster-wide backoff level lives in Redis
(``lua/report.lua`` computes the same curve as :func:`backoff_delay`); the
Python version serves this worker while Redis is unreachable, and the tests.
"""

from __future__ import annotations

import email.utils
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from middlewares.politeness.config import PolitenessConfig

RATE = "rate"  # the website asked us to slow down (429, 503, ...)
FAIL = "fail"  # a failure the circuit breaker counts (connection error, timeout, 5xx)
OK = "ok"


def parse_retry_after(value: bytes | str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent or invalid.

    A date in the past gives 0. RFC 9110 section 10.2.3.
    """
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 850 / asctime dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


def backoff_delay(level: int, config: PolitenessConfig, jitter: float) -> float:
    """Park length for the ``level``-th incident without Retry-After (0 = first), ``jitter`` in [-1, 1].

    ``min(base * factor**level, max) * (1 + POLITENESS_BACKOFF_JITTER * jitter)``.
    """
    raw = config.backoff_base * math.pow(config.backoff_factor, min(level, 64))
    return min(raw, config.backoff_max) * (1 + config.backoff_jitter * jitter)


def classify_status(status: int, config: PolitenessConfig) -> str | None:
    """RATE, FAIL or None (nothing to report) for an HTTP status."""
    if status in config.retry_after_statuses:
        return RATE
    if status in config.breaker_statuses:
        return FAIL
    return None
