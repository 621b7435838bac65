"""How the frontier remembers what it has seen: an exact set or a Bloom filter, forever or for a time.

Parsed once from the ``FRONTIER_DEDUPE`` / ``FRONTIER_BLOOM_*`` /
``FRONTIER_SEEN_*`` settings (docs/frontier.md "Deduplication") into the
*spec* string that ``lua/seen_lib.lua`` reads: the push script tests and
inserts a fingerprint in the same atomic step whichever the mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crawler.setting_values import float_setting, int_setting

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings

MODES = ("exact", "bloom")
SEGMENT_BYTES = 262_128  # lua/seen_lib.lua: one 256 KiB allocation per segment


@dataclass(frozen=True, slots=True)
class SeenConfig:
    """The dedupe mode, checked."""

    mode: str = "exact"
    capacity: int = 10_000_000
    error_rate: float = 0.001
    ttl: float = 0.0  # seconds a fingerprint is remembered at least; 0 = for ever
    generations: int = 4

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        mode = settings.get("FRONTIER_DEDUPE", "exact")
        if mode not in MODES:
            raise ValueError(f"FRONTIER_DEDUPE must be one of {', '.join(MODES)}, got {mode!r}")
        error = float_setting(settings, "FRONTIER_BLOOM_ERROR_RATE", 0.001, minimum=0, exclusive=True)
        if error >= 0.5:
            raise ValueError(f"FRONTIER_BLOOM_ERROR_RATE must be a number > 0 and < 0.5, got {error!r}")
        return cls(
            mode=mode,
            capacity=int_setting(settings, "FRONTIER_BLOOM_CAPACITY", 10_000_000, minimum=1),
            error_rate=error,
            ttl=float_setting(settings, "FRONTIER_SEEN_TTL", 0, minimum=0),
            generations=int_setting(settings, "FRONTIER_SEEN_GENERATIONS", 4, minimum=2),
        )

    @property
    def spec(self) -> str:
        """What ``lua/seen_lib.lua`` reads ("" for the exact set kept for ever)."""
        if self.mode == "exact" and not self.ttl:
            return ""
        period = self.ttl / (self.generations - 1) if self.ttl else 0
        return f"{self.mode}|{self.capacity}|{self.error_rate!r}|{period!r}|{self.generations}"

    def bloom_bytes(self) -> int:
        """Memory of one generation's first Bloom filter (what ``capacity`` and ``error_rate`` cost)."""
        bits = self.capacity * -math.log(self.error_rate) / math.log(2) ** 2
        return math.ceil(bits / (SEGMENT_BYTES * 8)) * 256 * 1024
