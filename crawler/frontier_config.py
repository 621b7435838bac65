"""The frontier's settings, parsed and checked once (see README, "Frontier")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crawler.setting_values import number_setting
from crawler.website import website_key_mode

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings


def _number(settings: BaseSettings, name: str, default: float, minimum: float, kind: type = float) -> Any:
    return number_setting(settings, name, default, minimum=minimum, integer=kind is int)


@dataclass(frozen=True, slots=True)
class FrontierConfig:
    """The frontier's settings, checked."""

    redis_url: str
    key_prefix: str
    prefetch: int
    flush_delay: float
    flush_max: int
    seen_cache: int
    idle_poll: float
    idle_close: float
    website_mode: str

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        prefix = settings.get("FRONTIER_KEY_PREFIX", "{%(spider)s}")
        try:
            prefix % {"spider": "x"}
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"FRONTIER_KEY_PREFIX must be a string using only %(spider)s, got {prefix!r}") from None
        if not isinstance(prefix, str) or not prefix.strip():
            raise ValueError(f"FRONTIER_KEY_PREFIX must be a non-empty string, got {prefix!r}")
        url = settings.get("REDIS_URL")
        if not url or not isinstance(url, str):
            raise ValueError(f"REDIS_URL must be a redis:// URL, got {url!r}")
        return cls(
            redis_url=url,
            key_prefix=prefix,
            prefetch=_number(settings, "FRONTIER_PREFETCH", 32, 1, int),
            flush_delay=_number(settings, "FRONTIER_FLUSH_DELAY", 0.01, 0),
            flush_max=_number(settings, "FRONTIER_FLUSH_MAX", 200, 1, int),
            seen_cache=_number(settings, "FRONTIER_SEEN_CACHE", 100_000, 0, int),
            idle_poll=_number(settings, "FRONTIER_IDLE_POLL_SECONDS", 0.25, 0.01),
            idle_close=_number(settings, "FRONTIER_IDLE_CLOSE_SECONDS", 0, 0),
            website_mode=website_key_mode(settings),
        )
