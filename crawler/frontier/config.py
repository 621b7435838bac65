"""The frontier's settings, parsed and checked once (docs/frontier.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from crawler.frontier.seen import SeenConfig
from crawler.redis_client import RedisClientConfig
from crawler.setting_values import float_setting, int_setting
from crawler.website import website_key_mode

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings


def partitions_setting(settings: BaseSettings) -> int:
    """``FRONTIER_PARTITIONS`` checked (the workers' config, the CLI and the status read it alike)."""
    return int_setting(settings, "FRONTIER_PARTITIONS", 1, minimum=1)


@dataclass(frozen=True, slots=True)
class FrontierConfig:
    """The frontier's settings, checked."""

    redis: RedisClientConfig
    key_prefix: str
    prefetch: int
    flush_delay: float
    flush_max: int
    seen_cache: int
    idle_poll: float
    idle_close: float
    close_timeout: float
    lease: float
    website_mode: str
    seen: SeenConfig
    partitions: int

    @classmethod
    def placeholder(cls) -> Self:
        """The defaults, for a scheduler that will not open (its settings were invalid)."""
        from scrapy.settings import Settings

        return cls.from_settings(Settings({"REDIS_URL": "redis://invalid"}))

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        prefix = settings.get("FRONTIER_KEY_PREFIX", "{%(spider)s}")
        try:
            prefix % {"spider": "x"}
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"FRONTIER_KEY_PREFIX must be a string using only %(spider)s, got {prefix!r}") from None
        if not isinstance(prefix, str) or not prefix.strip():
            raise ValueError(f"FRONTIER_KEY_PREFIX must be a non-empty string, got {prefix!r}")
        return cls(
            redis=RedisClientConfig.from_settings(settings),
            key_prefix=prefix,
            prefetch=int_setting(settings, "FRONTIER_PREFETCH", 32, minimum=1),
            flush_delay=float_setting(settings, "FRONTIER_FLUSH_DELAY", 0.01, minimum=0),
            flush_max=int_setting(settings, "FRONTIER_FLUSH_MAX", 200, minimum=1),
            seen_cache=int_setting(settings, "FRONTIER_SEEN_CACHE", 100_000, minimum=0),
            idle_poll=float_setting(settings, "FRONTIER_IDLE_POLL_SECONDS", 0.25, minimum=0.01),
            idle_close=float_setting(settings, "FRONTIER_IDLE_CLOSE_SECONDS", 0, minimum=0),
            close_timeout=float_setting(settings, "FRONTIER_CLOSE_TIMEOUT", 30, minimum=0, exclusive=True),
            lease=float_setting(settings, "FRONTIER_LEASE_SECONDS", 60, minimum=0),
            website_mode=website_key_mode(settings),
            seen=SeenConfig.from_settings(settings),
            partitions=partitions_setting(settings),
        )
