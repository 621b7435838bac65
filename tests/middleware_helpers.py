"""Run a downloader middleware that talks to Redis on a real crawler, between its spider_opened and spider_closed."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

M = TypeVar("M")


def run_middleware(cls: type[M], settings: dict[str, Any], body: Callable[[M], Awaitable[None]]) -> dict[str, Any]:
    """Build ``cls`` from a crawler with ``settings``, run ``body(middleware)`` while it is open; the crawl's stats."""

    async def main() -> dict[str, Any]:
        crawler = get_crawler(settings_dict=settings)
        mw: Any = build_from_crawler(cls, crawler)
        await mw.spider_opened()
        try:
            await body(mw)
        finally:
            await mw.spider_closed()
        assert crawler.stats is not None
        return crawler.stats.get_stats()

    return asyncio.run(main())
