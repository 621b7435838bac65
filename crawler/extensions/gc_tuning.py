"""Garbage-collector tuning for long-running crawl workers (an extension).

A Scrapy worker allocates container objects at a high rate (requests,
responses, Deferreds, selector trees), so CPython's cyclic collector runs a
generation-0 pass every 700 net allocations and, every so often, a full pass
over every tracked object, including the tens of thousands made at start-up
(imported modules, the public suffix list of ``crawler.website``, settings)
that live as long as the process. Measured with ``python -m bench frontier``
(bench/RESULTS.md, "Tuning"): about 13% of a worker's CPU went to the collector.

Once the engine has started, this extension:

* moves every object alive at that point to the permanent generation
  (``gc.freeze()``): full passes no longer walk them; and
* raises the generation-0 threshold (generations 1 and 2 keep Python's),
  so young-generation passes run less often; cyclic garbage waits a little
  longer before it is freed (at most that many net allocations).

Both are undone when the last crawler of the process stops.

Settings (docs/settings.md, "GC tuning"):

``GC_TUNING_ENABLED`` (bool, default ``False``; ``True`` in the project settings)
``GC_TUNING_FREEZE`` (bool, default ``True``)
``GC_TUNING_THRESHOLD`` (int >= 0, default 50000; 0 keeps Python's threshold)
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from scrapy import signals
from scrapy.exceptions import NotConfigured

from crawler.setting_values import int_setting

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GcTuningConfig:
    """Parsed ``GC_TUNING_*`` settings."""

    freeze: bool
    threshold: int

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        return cls(
            freeze=settings.getbool("GC_TUNING_FREEZE", True),
            threshold=int_setting(settings, "GC_TUNING_THRESHOLD", 50_000, minimum=0),
        )


class GcTuning:
    """Freeze start-up objects and space out young-generation passes while crawlers run."""

    # The collector is per process; crawlers of one process share the tuning.
    _active: ClassVar[int] = 0
    _saved_threshold: ClassVar[tuple[int, int, int] | None] = None
    _froze: ClassVar[bool] = False

    def __init__(self, crawler: Crawler, config: GcTuningConfig) -> None:
        self.crawler = crawler
        self.config = config
        self._applied = False
        crawler.signals.connect(self.engine_started, signal=signals.engine_started)
        crawler.signals.connect(self.engine_stopped, signal=signals.engine_stopped)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("GC_TUNING_ENABLED"):
            raise NotConfigured
        return cls(crawler, GcTuningConfig.from_settings(crawler.settings))

    def engine_started(self) -> None:
        cls = type(self)
        self._applied = True
        cls._active += 1
        if cls._active > 1:
            return  # another crawler of this process applied it
        before = gc.get_threshold()
        frozen = 0
        if self.config.freeze:
            gc.collect()  # what start-up left as garbage is freed, not frozen
            gc.freeze()
            cls._froze = True
            frozen = gc.get_freeze_count()
        if self.config.threshold:
            cls._saved_threshold = before
            gc.set_threshold(self.config.threshold, before[1], before[2])
        assert self.crawler.stats is not None
        self.crawler.stats.set_value("gc_tuning/frozen_objects", frozen)
        logger.info("GC tuning: %(frozen)d start-up objects frozen, generation-0 threshold %(new)d (was %(old)d)",
                    {"frozen": frozen, "new": gc.get_threshold()[0], "old": before[0]},
                    extra={"spider": self.crawler.spider})

    def engine_stopped(self) -> None:
        if not self._applied:
            return
        self._applied = False
        cls = type(self)
        cls._active -= 1
        assert self.crawler.stats is not None
        for generation, stats in enumerate(gc.get_stats()):
            self.crawler.stats.set_value(f"gc_tuning/collections_gen{generation}", stats["collections"])
        if cls._active:
            return
        if cls._saved_threshold is not None:
            gc.set_threshold(*cls._saved_threshold)
            cls._saved_threshold = None
        if cls._froze:
            gc.unfreeze()
            cls._froze = False
