"""``scrapy savefixture SPIDER URL``: record a page as a fixture the spider is tested against offline.

Downloads ``URL`` once with the spider's settings and downloader middlewares
(robots.txt, user agent, redirects followed), on Scrapy's in-memory scheduler
like the other one-off commands (:mod:`crawler.commands.one_off`), then calls
the callback on the recorded response exactly as the offline test does
(:func:`crawler.spider_fixtures.replay`) and writes ``fixture.json``, the body
and ``output.json`` to ``tests/fixtures/<spider>/<name>/``. Review the output
before committing it: it is what the test will expect from then on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy import Request
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.utils.conf import closest_scrapy_cfg
from w3lib.url import is_url, parse_url

from crawler.commands.one_off import apply_one_off_settings
from crawler.spider_fixtures import Fixture, replay, save

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator

    from scrapy import Spider
    from scrapy.http import Response
    from twisted.python.failure import Failure


def default_name(url: str) -> str:
    """A fixture name from the URL's path and query: ``/item/4`` -> ``item-4``, ``/`` -> ``index``."""
    parsed = parse_url(url)
    text = (parsed.path or "/") + (f"-{parsed.query}" if parsed.query else "")
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80] or "index"


def _json_object(text: str | None, option: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object, got {text!r}")
    return value


class Command(ScrapyCommand):
    """See the module docstring."""

    requires_project = True

    def syntax(self) -> str:
        return "[options] <spider> <url>"

    def short_desc(self) -> str:
        return "Record a page and what the spider yields from it, as a fixture tested offline"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-c", "--callback", default="parse", help="the spider method to call (default: parse)")
        parser.add_argument("--name", help="fixture folder name (default: from the URL path)")
        parser.add_argument("--meta", help="request meta, a JSON object")
        parser.add_argument("--cb-kwargs", dest="cb_kwargs", help="callback keyword arguments, a JSON object")
        parser.add_argument("--dir", dest="fixtures_dir",
                            help="fixtures folder (default: the project's tests/fixtures)")

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        apply_one_off_settings(self.settings)

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 2 or not is_url(args[1]):
            raise UsageError("savefixture needs a spider name and an absolute URL")
        spider_name, url = args
        meta = _json_object(opts.meta, "--meta")
        cb_kwargs = _json_object(opts.cb_kwargs, "--cb-kwargs")
        assert self.crawler_process is not None
        spidercls = self.crawler_process.spider_loader.load(spider_name)
        if not callable(getattr(spidercls, opts.callback, None)):
            raise UsageError(f"spider {spider_name!r} has no method {opts.callback!r}")
        recorded: list[Fixture] = []
        failures: list[Failure] = []

        def record(response: Response) -> None:
            recorded.append(Fixture.from_response(response, opts.callback, meta, cb_kwargs))

        request = Request(url, callback=record, errback=failures.append, dont_filter=True,
                          meta={**meta, "handle_httpstatus_all": True})

        async def start(spider: Spider) -> AsyncIterator[Request]:
            yield request

        spidercls.start = start  # type: ignore[assignment,method-assign]  # as Scrapy's fetch and parse do
        crawler = self.crawler_process.create_crawler(spidercls)
        self.crawler_process.crawl(crawler)
        self.crawler_process.start()
        if not recorded or crawler.spider is None:
            reason = failures[0].getErrorMessage() if failures else "no response (see the log)"
            print(f"Could not download {url}: {reason}")
            self.exitcode = 1
            return
        fixture = recorded[0]
        output = replay(crawler.spider, fixture)
        folder = self._folder(opts, spider_name, opts.name or default_name(url))
        save(folder, fixture, output)
        items = sum(1 for o in output if "item" in o)
        print(f"Saved {folder}: {fixture.status} {fixture.url}, {len(fixture.body)} bytes; "
              f"{opts.callback} yields {items} items and {len(output) - items} requests")

    def _folder(self, opts: argparse.Namespace, spider: str, name: str) -> Path:
        if opts.fixtures_dir:
            root = Path(opts.fixtures_dir)
        else:
            cfg = closest_scrapy_cfg()
            root = (Path(cfg).parent if cfg else Path.cwd()) / "tests" / "fixtures"
        return root / spider / name
