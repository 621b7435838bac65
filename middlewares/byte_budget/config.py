"""Settings of the byte budget: ``ByteBudgetConfig``, parsed once at start-up.

Every ``BYTE_BUDGET_*`` setting (docs/byte-budget.md) is read here; a bad
value stops the crawl with a ``ValueError`` naming the setting and the value.
``parse_budget`` also checks the run-time overrides, which the command line
(:mod:`middlewares.byte_budget.cli`) writes and the middleware reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crawler.redis_client import RedisClientConfig
from crawler.setting_values import dict_setting, float_setting, int_setting, parse_number
from crawler.website import website_key_mode

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings

# The one word for "no budget" (``None`` in Python settings); a budget of 0
# is a budget: nothing may be downloaded from the website.
UNLIMITED = "unlimited"


def parse_budget(name: str, raw: Any) -> int | None:
    """Bytes per window (a whole number >= 0; 0 blocks the website) or None for ``unlimited``.

    Accepts ints, whole-number floats and strings such as ``"1e6"``; ``None``,
    ``""``, ``"none"`` and ``"unlimited"`` mean unlimited.
    """
    if raw is None or raw == "" or (isinstance(raw, str) and raw.strip().lower() in ("none", UNLIMITED)):
        return None
    error = ValueError(f"{name} must be a whole number of bytes >= 0 (0 blocks the website) or "
                       f"{UNLIMITED!r} (None), got {raw!r}")
    value = parse_number(raw, error)
    if math.isinf(value) or value < 0 or not value.is_integer():
        raise error
    return int(value)


@dataclass(frozen=True, slots=True)
class ByteBudgetConfig:
    """Parsed ``BYTE_BUDGET_*`` settings."""

    default: int | None
    per_website: dict[str, int | None]
    window: float
    strict: bool
    default_estimate: int
    estimate_quantile: float
    stop_slack: int
    draw_bytes: int
    refresh: float
    retry: float
    park_max: float
    fallback_workers: int
    lease_downloads: int
    lease_seconds: float
    prefix: str
    redis: RedisClientConfig
    website_mode: str
    reservation_expiry: float  # seconds after which an unsettled reservation counts as ended

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        per_website = {
            str(site).lower(): parse_budget(f"BYTE_BUDGET_PER_WEBSITE[{site!r}]", value)
            for site, value in dict_setting(settings, "BYTE_BUDGET_PER_WEBSITE").items()
        }
        return cls(
            default=parse_budget("BYTE_BUDGET_DEFAULT", settings.get("BYTE_BUDGET_DEFAULT")),
            per_website=per_website,
            window=float_setting(settings, "BYTE_BUDGET_WINDOW_SECONDS", 60, minimum=0, exclusive=True),
            strict=settings.getbool("BYTE_BUDGET_STRICT", True),
            default_estimate=int_setting(settings, "BYTE_BUDGET_DEFAULT_ESTIMATE", 32768, minimum=1),
            estimate_quantile=_quantile(settings),
            stop_slack=int_setting(settings, "BYTE_BUDGET_STOP_SLACK", 4 * 1024 * 1024, minimum=0),
            draw_bytes=int_setting(settings, "BYTE_BUDGET_DRAW_BYTES", 262144, minimum=1),
            refresh=float_setting(settings, "BYTE_BUDGET_REFRESH_SECONDS", 2, minimum=0, exclusive=True),
            retry=float_setting(settings, "BYTE_BUDGET_RETRY_SECONDS", 0.25, minimum=0, exclusive=True),
            park_max=float_setting(settings, "BYTE_BUDGET_PARK_MAX_SECONDS", 2.5, minimum=0, exclusive=True),
            fallback_workers=int_setting(settings, "BYTE_BUDGET_FALLBACK_WORKERS", 0, minimum=0),
            lease_downloads=int_setting(settings, "BYTE_BUDGET_LEASE_DOWNLOADS", 128, minimum=1),
            lease_seconds=float_setting(settings, "BYTE_BUDGET_LEASE_SECONDS", 1.0, minimum=0, exclusive=True),
            prefix=str(settings.get("BYTE_BUDGET_KEY_PREFIX") or settings.get("BOT_NAME") or "crawler"),
            redis=RedisClientConfig.from_settings(settings, settings.get("BYTE_BUDGET_REDIS_URL")),
            website_mode=website_key_mode(settings),
            # A reservation nobody settles (crashed worker) ends at the latest
            # when Scrapy would have timed the download out.
            reservation_expiry=float(settings.getfloat("DOWNLOAD_TIMEOUT", 180)) + 10,
        )


def _quantile(settings: BaseSettings) -> float:
    value = float_setting(settings, "BYTE_BUDGET_ESTIMATE_QUANTILE", 0.9, minimum=0)
    if value > 1:
        raise ValueError(f"BYTE_BUDGET_ESTIMATE_QUANTILE must be a number in [0, 1], got "
                         f"{settings.get('BYTE_BUDGET_ESTIMATE_QUANTILE')!r}")
    return value
