"""Settings of politeness: ``PolitenessConfig``, parsed once at start-up.

Every ``POLITENESS_*`` setting (docs/politeness.md) is read here; a bad value
stops the crawl with a ``ValueError`` naming the setting and the value.
``parse_rate`` also checks the run-time rate overrides written by the command
line (:mod:`middlewares.politeness.cli`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy.utils.misc import load_object

from crawler.redis_client import RedisClientConfig
from crawler.setting_values import dict_setting, float_setting, int_setting
from crawler.website import website_key_mode

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings

NO_LIMIT = "none"
_PROBE_WAIT = 0.5  # seconds; a probe's answer usually takes one download
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``requests`` requests per ``window`` seconds."""

    requests: int
    window: float

    def __str__(self) -> str:
        return f"{self.requests}/{self.window:g}s"

    @property
    def per_second(self) -> float:
        return self.requests / self.window

    @classmethod
    def from_per_second(cls, rps: float) -> Rate:
        """``rps`` requests per second as a gate that spreads them: 1 per ``1/rps`` s below 1/s."""
        if rps >= 1:
            return cls(int(rps), 1.0)
        return cls(1, round(1 / rps, 3))


def parse_rate(name: str, raw: Any) -> Rate | None:
    """``"10/60"`` (requests / seconds), ``[10, 60]`` or None / ``"none"`` (no limit)."""
    if raw is None or raw == "" or (isinstance(raw, str) and raw.strip().lower() == NO_LIMIT):
        return None
    error = ValueError(f"{name} must be 'requests/seconds' (e.g. '10/60') with requests >= 1 and seconds > 0, "
                       f"or None, got {raw!r}")
    if isinstance(raw, (list, tuple)) and len(raw) == 2:
        raw = f"{raw[0]}/{raw[1]}"
    if not isinstance(raw, str):
        raise error
    match = _RATE.match(raw)
    if not match:
        raise error
    requests, window = int(match.group(1)), float(match.group(2))
    if requests < 1 or window <= 0:
        raise error
    return Rate(requests, window)


def _per_website(settings: BaseSettings, name: str) -> dict[str, Any]:
    return {str(k).lower().rstrip("."): v for k, v in dict_setting(settings, name).items()}


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    """Adaptive slow-down (``POLITENESS_ADAPTIVE_*``): the rule's parameters (docs/politeness.md)."""

    websites: frozenset[str]  # websites it is on for; "*": every website; empty: off
    window: float  # seconds of responses compared with the baseline
    min_samples: int  # responses a window needs before it is judged
    latency_factor: float  # worse: mean latency >= factor x baseline ...
    error_margin: float  # ... or error rate >= baseline + margin
    decrease: float  # worse: rate x decrease
    increase: float  # healthy while slowed: rate x increase
    min_rate: float  # requests per second, the floor

    def applies(self, website: str) -> bool:
        return bool(self.websites) and ("*" in self.websites or website in self.websites)

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        raw = settings.getlist("POLITENESS_ADAPTIVE_WEBSITES", [])
        if not all(isinstance(w, str) and w.strip() for w in raw):
            raise ValueError(f"POLITENESS_ADAPTIVE_WEBSITES must be a list of websites or '*', got {raw!r}")
        decrease = float_setting(settings, "POLITENESS_ADAPTIVE_DECREASE", 0.5, minimum=0, exclusive=True)
        if decrease >= 1:
            raise ValueError(f"POLITENESS_ADAPTIVE_DECREASE must be a number > 0 and < 1, got {decrease!r}")
        return cls(
            websites=frozenset(w.strip().lower().rstrip(".") for w in raw),
            window=float_setting(settings, "POLITENESS_ADAPTIVE_WINDOW_SECONDS", 10, minimum=0, exclusive=True),
            min_samples=int_setting(settings, "POLITENESS_ADAPTIVE_MIN_SAMPLES", 5, minimum=1),
            latency_factor=float_setting(settings, "POLITENESS_ADAPTIVE_LATENCY_FACTOR", 3, minimum=1,
                                         exclusive=True),
            error_margin=float_setting(settings, "POLITENESS_ADAPTIVE_ERROR_MARGIN", 0.2, minimum=0,
                                       exclusive=True),
            decrease=decrease,
            increase=float_setting(settings, "POLITENESS_ADAPTIVE_INCREASE", 1.25, minimum=1, exclusive=True),
            min_rate=float_setting(settings, "POLITENESS_ADAPTIVE_MIN_RATE", 0.2, minimum=0, exclusive=True),
        )


def _statuses(settings: BaseSettings, name: str, default: list[int]) -> frozenset[int]:
    raw = settings.getlist(name, default)
    try:
        codes = frozenset(int(code) for code in raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of HTTP status codes, got {raw!r}") from None
    if any(not 100 <= code <= 599 for code in codes):
        raise ValueError(f"{name} must be a list of HTTP status codes, got {raw!r}")
    return codes


def _exceptions(settings: BaseSettings, name: str) -> tuple[type[BaseException], ...]:
    raw = settings.getlist(name) if settings.get(name) is not None else settings.getlist("RETRY_EXCEPTIONS")
    loaded = []
    for item in raw:
        cls = load_object(item) if isinstance(item, str) else item
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ValueError(f"{name} must list exception classes, got {item!r}")
        loaded.append(cls)
    return tuple(loaded)


@dataclass(frozen=True, slots=True)
class PolitenessConfig:
    """Parsed ``POLITENESS_*`` settings."""

    # Retry-After and backoff
    retry_after_statuses: frozenset[int]
    retry_after_max: float
    backoff_base: float
    backoff_factor: float
    backoff_max: float
    backoff_forgive: float
    backoff_jitter: float
    max_requeues: int
    # circuit breaker
    breaker_failures: int
    breaker_statuses: frozenset[int]
    breaker_exceptions: tuple[type[BaseException], ...]
    breaker_cool: float
    breaker_cool_factor: float
    breaker_cool_max: float
    probe_timeout: float
    # gates: robots.txt Crawl-delay and request rate
    crawl_delay: bool
    crawl_delay_max: float
    rate_default: Rate | None
    rate_per_website: dict[str, Rate | None]
    gate_margin: float
    gate_park_max: float
    lease_permits: int
    lease_seconds: float
    # How long requests that find the probe out wait before they ask again: the frontier's
    # not-before marks only ever lengthen a park, so this stays short (half the shortest park).
    probe_wait: float
    adaptive: AdaptiveConfig
    # plumbing
    refresh: float
    prefix: str
    redis: RedisClientConfig
    website_mode: str

    def summary(self) -> str:
        """The effective configuration, for the start-up log line."""
        a = self.adaptive
        adaptive = (f"adaptive slow-down on {sorted(a.websites)} (latency x{a.latency_factor:g} or errors "
                    f"+{a.error_margin:g} over {a.window:g}s windows)" if a.websites else "adaptive slow-down off")
        per = {k: str(v) if v else "none" for k, v in self.rate_per_website.items()}
        return (f"Retry-After on {sorted(self.retry_after_statuses)} (cap {self.retry_after_max:g}s), backoff "
                f"{self.backoff_base:g}s x{self.backoff_factor:g} up to {self.backoff_max:g}s; breaker after "
                f"{self.breaker_failures} failures, cooling {self.breaker_cool:g}s; robots.txt Crawl-delay and "
                f"Request-rate {f'honoured up to {self.crawl_delay_max:g}s' if self.crawl_delay else 'ignored'}; "
                f"rate default {self.rate_default or 'none'}, per website {per}; {adaptive}")

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        per_website = {site: parse_rate(f"POLITENESS_RATE_PER_WEBSITE[{site!r}]", value)
                       for site, value in _per_website(settings, "POLITENESS_RATE_PER_WEBSITE").items()}
        backoff_base = float_setting(settings, "POLITENESS_BACKOFF_BASE_SECONDS", 60, minimum=0, exclusive=True)
        cool = float_setting(settings, "POLITENESS_BREAKER_COOL_SECONDS", 30, minimum=0, exclusive=True)
        park_max = float_setting(settings, "POLITENESS_GATE_PARK_MAX_SECONDS", 2.5, minimum=0, exclusive=True)
        jitter = float_setting(settings, "POLITENESS_BACKOFF_JITTER", 0.1, minimum=0)
        if jitter >= 1:
            raise ValueError(f"POLITENESS_BACKOFF_JITTER must be a number >= 0 and < 1, got {jitter!r}")
        return cls(
            retry_after_statuses=_statuses(settings, "POLITENESS_RETRY_AFTER_STATUSES", [429, 503]),
            retry_after_max=float_setting(settings, "POLITENESS_RETRY_AFTER_MAX_SECONDS", 3600, minimum=0),
            backoff_base=backoff_base,
            backoff_factor=float_setting(settings, "POLITENESS_BACKOFF_FACTOR", 2, minimum=1),
            backoff_max=float_setting(settings, "POLITENESS_BACKOFF_MAX_SECONDS", 86400, minimum=0, exclusive=True),
            backoff_forgive=float_setting(settings, "POLITENESS_BACKOFF_FORGIVE_SECONDS", 1800, minimum=0),
            backoff_jitter=jitter,
            max_requeues=int_setting(settings, "POLITENESS_MAX_REQUEUES", 3, minimum=0),
            breaker_failures=int_setting(settings, "POLITENESS_BREAKER_FAILURES", 5, minimum=1),
            breaker_statuses=_statuses(settings, "POLITENESS_BREAKER_STATUSES", [500, 502, 504, 522, 524]),
            breaker_exceptions=_exceptions(settings, "POLITENESS_BREAKER_EXCEPTIONS"),
            breaker_cool=cool,
            breaker_cool_factor=float_setting(settings, "POLITENESS_BREAKER_COOL_FACTOR", 2, minimum=1),
            breaker_cool_max=float_setting(settings, "POLITENESS_BREAKER_COOL_MAX_SECONDS", 3600, minimum=0,
                                           exclusive=True),
            probe_timeout=float_setting(settings, "POLITENESS_PROBE_TIMEOUT_SECONDS",
                                        float(settings.getfloat("DOWNLOAD_TIMEOUT", 180)) + 10, minimum=0,
                                        exclusive=True),
            crawl_delay=settings.getbool("POLITENESS_CRAWL_DELAY_ENABLED", True),
            crawl_delay_max=float_setting(settings, "POLITENESS_CRAWL_DELAY_MAX_SECONDS", 60, minimum=0),
            rate_default=parse_rate("POLITENESS_RATE_DEFAULT", settings.get("POLITENESS_RATE_DEFAULT")),
            rate_per_website=per_website,
            gate_margin=float_setting(settings, "POLITENESS_GATE_MARGIN_SECONDS", 0.1, minimum=0),
            gate_park_max=park_max,
            probe_wait=min(park_max, _PROBE_WAIT, backoff_base / 2, cool / 2),
            adaptive=AdaptiveConfig.from_settings(settings),
            lease_permits=int_setting(settings, "POLITENESS_RATE_LEASE_PERMITS", 32, minimum=1),
            lease_seconds=float_setting(settings, "POLITENESS_RATE_LEASE_SECONDS", 1.0, minimum=0, exclusive=True),
            refresh=float_setting(settings, "POLITENESS_REFRESH_SECONDS", 1.0, minimum=0, exclusive=True),
            prefix=str(settings.get("POLITENESS_KEY_PREFIX") or settings.get("BOT_NAME") or "crawler"),
            redis=RedisClientConfig.from_settings(settings, settings.get("POLITENESS_REDIS_URL")),
            website_mode=website_key_mode(settings),
        )
