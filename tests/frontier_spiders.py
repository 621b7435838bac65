"""Spiders used only by the frontier's end-to-end tests (loaded with SPIDER_MODULES)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from crawler.frontier import FrontierSpider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scrapy.http import Response


class SlowCallbackSpider(FrontierSpider):
    """Spends SLOW_CALLBACK_SECONDS in each callback: busy, yet nothing queued in Redis."""

    name = "frontier_slow"

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        await asyncio.sleep(self.settings.getfloat("SLOW_CALLBACK_SECONDS"))
        if response.meta.get("depth", 0) == 0:
            yield response.follow("/robots.txt", callback=self.parse)
