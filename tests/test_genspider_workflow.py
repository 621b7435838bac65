"""One spider per site, as the README walks through it, in a copy of the project.

genspider -t site -> fill selectors -> savefixture against a live site -> the
generated test passes offline (the site stopped) -> a changed selector fails it
with a diff; and the new spider seeded, crawled, its items in MongoDB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from demosite.sites import SiteConfig
from devtools.services import ROOT, start_demosite

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
# The default site profile, broken pages included: /broken (always 500), /busy
# (always 429) and /missing (404), as a real site has them.
SITE = SiteConfig(host="example.test", kind="news", items=12, per_page=4, page_bytes=1500)
TIMEOUT = 180  # a hung command fails the test; not a timing assertion


def copy_project(dest: Path) -> Path:
    """The project's files as a fresh clone has them (tracked, or new and not ignored)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def run(project: Path, *cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(project), "PYTHONWARNINGS": "error",
                "RESOLVE_HOSTS": "*.test:127.0.0.1", **(env or {})}
    return subprocess.run(list(cmd), cwd=project, env=full_env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT, check=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A project copy with spider ``example`` generated and one fixture recorded; the site then stopped."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    out = run(project, str(BIN / "scrapy"), "genspider", "-t", "site", "example", "example.test")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (project / "crawler/spiders/example.py").exists() and (project / "tests/test_spider_example.py").exists()
    site = start_demosite(tmp_path_factory.mktemp("site"), (SITE,))
    try:
        url = f"http://example.test:{site.port}/item/4"
        out = run(project, str(BIN / "scrapy"), "savefixture", "--nolog", "example", url)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "parse yields 1 items and" in out.stdout
    finally:
        site.stop()
    yield project, site.port


def test_generated_spider_is_built_on_the_frontier(project: tuple[Path, int]) -> None:
    source = (project[0] / "crawler/spiders/example.py").read_text()
    assert "class ExampleSpider(FrontierSpider):" in source
    assert '"VALIDATE_SCHEMAS": {"crawler.spiders.example.ExampleItem": "crawler.spiders.example.SCHEMA"}' in source
    out = run(project[0], str(BIN / "scrapy"), "list")
    assert "example" in out.stdout.split()
    listed = run(project[0], str(BIN / "scrapy"), "genspider", "-l").stdout.split()
    assert {"basic", "crawl", "csvfeed", "xmlfeed", "site"} <= set(listed)  # Scrapy's own templates kept


def test_a_new_spider_breaks_no_existing_test(project: tuple[Path, int]) -> None:
    # The tests that once listed the demo spiders, and those that run every spider.
    out = run(project[0], sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
              "tests/test_settings.py::test_scrapy_list_shows_one_spider_per_site",
              "tests/test_frontier_cli.py::test_unknown_spider", "tests/test_spider_fixtures.py",
              "tests/test_commands_dev.py::test_check_runs_the_demo_spiders_contracts")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_recorded_fixture_passes_offline_and_a_changed_selector_fails_with_a_diff(project: tuple[Path, int]) -> None:
    root, _ = project
    fixture = root / "tests/fixtures/example/item-4"
    assert json.loads((fixture / "output.json").read_text())[0]["type"] == "crawler.spiders.example.ExampleItem"
    pytest_cmd = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_spider_example.py")
    out = run(root, *pytest_cmd)  # the demo site is stopped: offline
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout
    spider = root / "crawler/spiders/example.py"
    changed = spider.read_text().replace('response.css("h1::text")', 'response.css("[itemprop=author]::text")')
    spider.write_text(changed)
    out = run(root, *pytest_cmd)
    assert out.returncode == 1
    assert "the output on http://example.test" in out.stdout and "changed" in out.stdout
    assert '-      "title": ' in out.stdout and '+      "title": ' in out.stdout  # the diff


def test_the_new_spider_is_seeded_crawled_and_its_items_are_in_mongodb(
    project: tuple[Path, int], redis_url: str, mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    from pymongo import MongoClient

    root, _ = project
    site = start_demosite(tmp_path, (SITE,))
    try:
        env = {"REDIS_URL": redis_url, "MONGO_URI": mongo_server_uri, "MONGO_DATABASE": mongo_db}
        out = run(root, sys.executable, "-m", "crawler", "seed", "example", f"http://example.test:{site.port}/",
                  env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        out = run(root, str(BIN / "scrapy"), "crawl", "example", "-s", "FRONTIER_IDLE_CLOSE_SECONDS=1",
                  "-s", f"LOG_FILE={tmp_path / 'crawl.log'}", env=env)
        assert out.returncode == 0, (tmp_path / "crawl.log").read_text()[-3000:]
    finally:
        site.stop()
    with MongoClient(mongo_server_uri) as client:
        docs = list(client[mongo_db]["example"].find({}, {"_id": 0}))
        dead = client[mongo_db]["dead_letter"].count_documents({})
    item_pages = {f"http://example.test:{site.port}/item/{n}" for n in range(SITE.items)}
    assert item_pages <= {d["url"] for d in docs}
    assert all(d["title"] for d in docs) and dead == 0
