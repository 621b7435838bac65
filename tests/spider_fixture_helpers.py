"""Checks of a spider's recorded fixtures (crawler/spider_fixtures.py), shared by the spiders' tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from scrapy import Request
from scrapy.spiderloader import get_spider_loader
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.project import get_project_settings
from scrapy.utils.test import get_crawler

from crawler.spider_fixtures import FIXTURE_FILE, load, output_diff, replay, run_callback
from pipelines.validate import DeadLetter, ValidatePipeline

if TYPE_CHECKING:
    from pathlib import Path

    from scrapy import Spider
    from scrapy.crawler import Crawler


def spider_crawler(name: str) -> tuple[Spider, Crawler]:
    """Spider ``name`` built as a worker builds it: project settings, then its custom_settings."""
    settings = get_project_settings()
    spidercls = get_spider_loader(settings).load(name)
    # The project's own settings; offline, no reactor is needed: get_crawler picks what is installed.
    project = {k: settings[k] for k in settings if (settings.getpriority(k) or 0) > 0 and k != "TWISTED_REACTOR"}
    crawler = get_crawler(spidercls, settings_dict=project)
    return spidercls.from_crawler(crawler), crawler


def check_fixture(spider_name: str, folder: Path) -> None:
    """The spider's output on the recorded page is the recorded output; else fail with a diff."""
    spider, _ = spider_crawler(spider_name)
    fixture, expected = load(folder)
    diff = output_diff(expected, replay(spider, fixture), str(folder))
    if diff:
        pytest.fail(f"{spider_name}: the output on {fixture.url} ({folder / FIXTURE_FILE}) changed. If that is "
                    f"intended, record it again with `scrapy savefixture` or edit output.json.\n{diff}",
                    pytrace=False)


def check_items_valid(spider_name: str, folder: Path) -> None:
    """Every item the spider yields on the recorded page passes its schema (VALIDATE_SCHEMAS)."""
    spider, crawler = spider_crawler(spider_name)
    fixture, _ = load(folder)
    validate = build_from_crawler(ValidatePipeline, crawler)
    for out in run_callback(spider, fixture):
        if isinstance(out, Request):
            continue
        checked = validate.process_item(out)
        assert not isinstance(checked, DeadLetter), f"{spider_name}: invalid item on {fixture.url}: {checked}"
