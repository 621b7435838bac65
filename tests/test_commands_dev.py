"""Scrapy's dev commands (fetch, shell, parse, check) against the demo site, without Redis or MongoDB."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from scrapy.settings import Settings
from scrapy.spiderloader import get_spider_loader
from scrapy.utils.project import get_project_settings

from crawler.commands.one_off import ONE_OFF_SETTINGS, apply_one_off_settings
from crawler.contracts import site_url
from devtools.services import ROOT, free_port
from tests.conftest import TEST_SITES

if TYPE_CHECKING:
    from tests.conftest import DemoSite

SCRAPY = str(Path(sys.executable).parent / "scrapy")
TIMEOUT = 120  # a hung command fails the test; not a timing assertion


def scrapy(*args: str) -> subprocess.CompletedProcess[str]:
    # Nothing listens on these ports: the commands must not need Redis or MongoDB.
    nowhere = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "error", "RESOLVE_HOSTS": "*.test:127.0.0.1",
           "REDIS_URL": f"redis://127.0.0.1:{nowhere}/0", "MONGO_URI": f"mongodb://127.0.0.1:{nowhere}"}
    return subprocess.run([SCRAPY, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT, check=False)


def served(demo_site: DemoSite, host: str, path: str) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{demo_site.port}{path}", headers={"Host": host})
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(r.read().decode())


def test_fetch_prints_the_page_once(demo_site: DemoSite) -> None:
    mark = demo_site.mark()
    out = scrapy("fetch", "--nolog", demo_site.url("news.test", "/item/4"))
    assert out.returncode == 0, out.stderr
    assert out.stdout == served(demo_site, "news.test", "/item/4") + "\n"
    paths = [e["path"] for e in demo_site.log(since=mark) if e["host"].startswith("news.test")]
    assert paths.count("/item/4") == 2  # the command's, then ours above


def test_fetch_headers(demo_site: DemoSite) -> None:
    out = scrapy("fetch", "--nolog", "--headers", demo_site.url("shop-a.test", "/item/3"))
    assert out.returncode == 0, out.stderr
    assert "> User-Agent: crawler (+https://example.invalid/crawler-bot)" in out.stdout
    assert "< Content-Type: text/html; charset=utf-8" in out.stdout


def test_shell_evaluates_code(demo_site: DemoSite) -> None:
    out = scrapy("shell", "--nolog", "-c", "(response.status, response.css('h1::text').get())",
                 demo_site.url("news.test", "/item/4"))
    assert out.returncode == 0, out.stderr
    title = served(demo_site, "news.test", "/item/4").split('"headline">', 1)[1].split("<", 1)[0]
    assert out.stdout.strip() == repr((200, title))


def test_parse_with_spider_and_callback(demo_site: DemoSite) -> None:
    url = demo_site.url("news.test", "/item/4")
    out = scrapy("parse", "--nolog", "--nocolour", "--spider=news", "-c", "parse_article", url)
    assert out.returncode == 0, out.stderr
    assert ">>> STATUS DEPTH LEVEL 1 <<<" in out.stdout
    items, requests = out.stdout.split("# Scraped Items", 1)[1].split("# Requests", 1)
    assert f"'url': '{url}'" in items and "'headline':" in items
    assert f"<GET {demo_site.url('news.test', '/item/5')}>" in requests


def demo_spiders() -> list[str]:
    """The spiders of the sites the test demo server serves (other spiders' contracts need their own sites)."""
    settings = get_project_settings()
    loader = get_spider_loader(settings)
    hosts = {site.host for site in TEST_SITES}
    return sorted(name for name in loader.list() if set(loader.load(name).allowed_domains or ()) & hosts)


def test_check_runs_the_demo_spiders_contracts(demo_site: DemoSite) -> None:
    spiders = demo_spiders()
    assert {"news", "shop_a", "shop_b"} <= set(spiders)
    out = scrapy("check", *spiders, "-s", f"CONTRACTS_SITE_URL=http://%(domain)s:{demo_site.port}")
    assert out.returncode == 0, out.stdout + out.stderr
    ran = [line for line in out.stderr.splitlines() if line.startswith("Ran ")]
    assert ran and ran[0].startswith("Ran ") and int(ran[0].split()[1]) >= 4, out.stderr
    assert out.stderr.rstrip().endswith("OK")


def test_check_fails_when_a_contract_fails(demo_site: DemoSite) -> None:
    # shop_a's contract page /item/7 under /missing/ is a 404.
    out = scrapy("check", "shop_a", "-s", f"CONTRACTS_SITE_URL=http://%(domain)s:{demo_site.port}/missing")
    assert out.returncode == 1
    assert "ERROR: [shop_a] parse (errback)" in out.stderr and "FAILED (errors=1)" in out.stderr


def test_command_line_settings_still_win() -> None:
    settings = Settings({"SCHEDULER": "crawler.frontier.scheduler.FrontierScheduler", "BYTE_BUDGET_ENABLED": True},
                        priority="project")
    settings.set("MONGO_WRITER_ENABLED", True, priority="cmdline")
    apply_one_off_settings(settings)
    assert settings["SCHEDULER"] == ONE_OFF_SETTINGS["SCHEDULER"]
    assert settings.getbool("BYTE_BUDGET_ENABLED") is False
    assert settings.getbool("MONGO_WRITER_ENABLED") is True
    kept = Settings({"MONGO_WRITER_ENABLED": True}, priority="project")
    apply_one_off_settings(kept, keep=("MONGO_WRITER_ENABLED",))  # scrapy parse --pipelines
    assert kept.getbool("MONGO_WRITER_ENABLED") is True


@pytest.mark.parametrize(("template", "path", "expected"), [
    ("https://%(domain)s", "/item/4", "https://news.test/item/4"),
    ("http://%(domain)s:8080/", "/a?b=1", "http://news.test:8080/a?b=1"),
])
def test_site_url(template: str, path: str, expected: str) -> None:
    assert site_url(template, "news.test", path) == expected


@pytest.mark.parametrize(("template", "path", "message"), [
    ("https://%(domain)s", "item/4", "starting with '/'"),
    ("https://%(host)s", "/", "CONTRACTS_SITE_URL must contain only %\\(domain\\)s"),
])
def test_site_url_errors(template: str, path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        site_url(template, "news.test", path)
