"""The GC tuning extension (crawler/extensions/gc_tuning.py), on real crawlers in this process."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

import pytest
from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.test import get_crawler

from crawler.extensions.gc_tuning import GcTuning

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    # A failed test may have left a crawler "running": the next one starts clean.
    GcTuning._active, GcTuning._saved_threshold, GcTuning._froze = 0, None, False


def _tuning(**settings: Any) -> tuple[Any, GcTuning]:
    crawler = get_crawler(settings_dict={"GC_TUNING_ENABLED": True, **settings})
    crawler._apply_settings()  # stats and signals as in a crawl
    return crawler, GcTuning.from_crawler(crawler)


def test_off_unless_enabled() -> None:
    with pytest.raises(NotConfigured):
        GcTuning.from_crawler(get_crawler(settings_dict={}))


@pytest.mark.parametrize("value", ["-1", "lots", "2.5"])
def test_bad_threshold_is_named(value: str) -> None:
    with pytest.raises(ValueError, match=f"GC_TUNING_THRESHOLD must be an integer >= 0, got '{value}'"):
        _tuning(GC_TUNING_THRESHOLD=value)


def test_freezes_and_raises_threshold_while_the_engine_runs() -> None:
    before = gc.get_threshold()
    crawler, ext = _tuning(GC_TUNING_THRESHOLD=12345)  # ext: signals hold weak references
    crawler.signals.send_catch_log(signals.engine_started)
    assert gc.get_threshold() == (12345, before[1], before[2])
    assert gc.get_freeze_count() > 1000
    assert crawler.stats.get_value("gc_tuning/frozen_objects") > 1000
    crawler.signals.send_catch_log(signals.engine_stopped)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert crawler.stats.get_value("gc_tuning/collections_gen0") > 0
    assert ext.config.threshold == 12345


def test_each_part_can_be_turned_off() -> None:
    before = gc.get_threshold()
    crawler, ext = _tuning(GC_TUNING_FREEZE=False, GC_TUNING_THRESHOLD=0)
    crawler.signals.send_catch_log(signals.engine_started)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert crawler.stats.get_value("gc_tuning/frozen_objects") == 0
    crawler.signals.send_catch_log(signals.engine_stopped)
    assert not ext.config.freeze


def test_crawlers_of_one_process_share_it_until_the_last_stops() -> None:
    before = gc.get_threshold()
    first, ext1 = _tuning(GC_TUNING_THRESHOLD=20000)
    second, ext2 = _tuning(GC_TUNING_THRESHOLD=30000)
    first.signals.send_catch_log(signals.engine_started)
    second.signals.send_catch_log(signals.engine_started)
    assert gc.get_threshold()[0] == 20000  # the first one applied it
    first.signals.send_catch_log(signals.engine_stopped)
    assert gc.get_threshold()[0] == 20000 and gc.get_freeze_count() > 0  # the second still runs
    second.signals.send_catch_log(signals.engine_stopped)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    assert ext1 is not ext2
