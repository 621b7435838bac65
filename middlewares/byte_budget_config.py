"""Settings of the byte budget: ``Config``, parsed once at start-up.

Every ``BYTE_BUDGET_*`` setting (README, "Byte budget") is read here; a bad
value stops the crawl with a ``ValueError`` naming the setting and the value.
``parse_budget`` also checks the run-time overrides, which the command line
(:mod:`middlewares.byte_budget_cli`) writes and the middleware reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crawler.setting_values import number_setting
from crawler.website import website_key_mode

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings

UNLIMITED = "unlimited"


def parse_budget(name: str, raw: Any) -> int | None:
    """Bytes per window (int >= 0) or None (no budget) from a setting value."""
    if raw is None or raw == "" or (isinstance(raw, str) and raw.lower() in ("none", UNLIMITED)):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of bytes >= 0 or None, got {raw!r}") from None
    if value < 0 or (isinstance(raw, float) and raw != value):
        raise ValueError(f"{name} must be a number of bytes >= 0 or None, got {raw!r}")
    return value


def _number(settings: BaseSettings, name: str, default: float, minimum: float, *, strict: bool) -> float:
    return number_setting(settings, name, default, minimum=minimum, exclusive=strict)


def _whole(settings: BaseSettings, name: str, default: int, minimum: int) -> int:
    return int(number_setting(settings, name, default, minimum=minimum, integer=True))


@dataclass(frozen=True, slots=True)
class Config:
    """Parsed ``BYTE_BUDGET_*`` settings."""

    default: int | None
    per_website: dict[str, int | None]
    window: float
    strict: bool
    default_estimate: int
    estimate_margin: float
    stop_slack: int
    refresh: float
    retry: float
    park_max: float
    fallback_workers: int
    lease_downloads: int
    lease_seconds: float
    prefix: str
    redis_url: str
    website_mode: str
    lease: float

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        per_raw = settings.get("BYTE_BUDGET_PER_WEBSITE") or {}
        if isinstance(per_raw, str):
            try:
                per_raw = json.loads(per_raw)
            except ValueError:
                raise ValueError(f"BYTE_BUDGET_PER_WEBSITE must be a dict or JSON object, got {per_raw!r}") from None
        if not isinstance(per_raw, dict):
            raise ValueError(f"BYTE_BUDGET_PER_WEBSITE must be a dict or JSON object, got {per_raw!r}")
        per_website = {
            str(site).lower(): parse_budget(f"BYTE_BUDGET_PER_WEBSITE[{site!r}]", value)
            for site, value in per_raw.items()
        }
        fallback = _number(settings, "BYTE_BUDGET_FALLBACK_WORKERS", 0, 0, strict=False)
        if fallback != int(fallback):
            raise ValueError(f"BYTE_BUDGET_FALLBACK_WORKERS must be a whole number >= 0, got {fallback!r}")
        redis_url = settings.get("BYTE_BUDGET_REDIS_URL") or settings.get("REDIS_URL")
        if not redis_url:
            raise ValueError("BYTE_BUDGET_REDIS_URL (or REDIS_URL) must be set for BYTE_BUDGET_ENABLED")
        return cls(
            default=parse_budget("BYTE_BUDGET_DEFAULT", settings.get("BYTE_BUDGET_DEFAULT")),
            per_website=per_website,
            window=_number(settings, "BYTE_BUDGET_WINDOW_SECONDS", 60, 0, strict=True),
            strict=settings.getbool("BYTE_BUDGET_STRICT", True),
            default_estimate=int(_number(settings, "BYTE_BUDGET_DEFAULT_ESTIMATE", 32768, 1, strict=False)),
            estimate_margin=_number(settings, "BYTE_BUDGET_ESTIMATE_MARGIN", 4, 0, strict=False),
            stop_slack=int(_number(settings, "BYTE_BUDGET_STOP_SLACK", 65536, 0, strict=False)),
            refresh=_number(settings, "BYTE_BUDGET_REFRESH_SECONDS", 2, 0, strict=True),
            retry=_number(settings, "BYTE_BUDGET_RETRY_SECONDS", 0.25, 0, strict=True),
            park_max=_number(settings, "BYTE_BUDGET_PARK_MAX_SECONDS", 2.5, 0, strict=True),
            fallback_workers=int(fallback),
            lease_downloads=_whole(settings, "BYTE_BUDGET_LEASE_DOWNLOADS", 128, 1),
            lease_seconds=_number(settings, "BYTE_BUDGET_LEASE_SECONDS", 1.0, 0, strict=True),
            prefix=str(settings.get("BYTE_BUDGET_KEY_PREFIX") or settings.get("BOT_NAME") or "crawler"),
            redis_url=str(redis_url),
            website_mode=website_key_mode(settings),
            # A reservation nobody settles (crashed worker) ends at the latest
            # when Scrapy would have timed the download out.
            lease=float(settings.getfloat("DOWNLOAD_TIMEOUT", 180)) + 10,
        )
