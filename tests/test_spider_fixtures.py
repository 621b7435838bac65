"""Every spider's recorded fixtures (tests/fixtures/<spider>/<name>/) replay offline to their recorded output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from scrapy.spiderloader import get_spider_loader
from scrapy.utils.project import get_project_settings

from crawler.spider_fixtures import OUTPUT_FILE, fixture_folders
from tests.spider_fixture_helpers import check_fixture, check_items_valid

ROOT = Path(__file__).parent / "fixtures"
SPIDERS = sorted(get_spider_loader(get_project_settings()).list())
CASES = [(spider, folder) for spider in SPIDERS for folder in fixture_folders(ROOT, spider)]
IDS = [f"{spider}/{folder.name}" for spider, folder in CASES]


@pytest.mark.parametrize(("spider", "folder"), CASES, ids=IDS)
def test_fixture_output(spider: str, folder: Path) -> None:
    check_fixture(spider, folder)


@pytest.mark.parametrize(("spider", "folder"), CASES, ids=IDS)
def test_fixture_items_match_the_schema(spider: str, folder: Path) -> None:
    check_items_valid(spider, folder)


def test_the_demo_spiders_have_fixtures() -> None:
    assert {"news", "shop_a", "shop_b"} <= {spider for spider, _ in CASES}


def test_a_changed_output_fails_with_a_diff(tmp_path: Path) -> None:
    spider, folder = next(case for case in CASES if case[0] == "news")
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    expected = json.loads((copy / OUTPUT_FILE).read_text())
    expected[0] = {"item": {"url": "http://elsewhere.test/"}, "type": "crawler.items.Article"}
    (copy / OUTPUT_FILE).write_text(json.dumps(expected))
    with pytest.raises(pytest.fail.Exception) as failed:
        check_fixture(spider, copy)
    assert '-      "url": "http://elsewhere.test/"' in str(failed.value)
    assert "record it again with `scrapy savefixture`" in str(failed.value)
