"""Spider for the demo news site ``news.test``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.http import TextResponse

from crawler.frontier.spider import FrontierSpider
from crawler.items import Article

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy import Request
    from scrapy.http import Response


class NewsSpider(FrontierSpider):
    """Follows section listings and yields an Article per story."""

    name = "news"
    allowed_domains = ["news.test"]

    def parse(self, response: TextResponse) -> Iterator[Request]:
        """A section listing: follows listings and stories.

        @site_path /list/1
        @returns items 0 0
        @returns requests 2
        """
        yield from response.follow_all(css="a.listing, a.next")
        yield from response.follow_all(css="a.item, a.related", callback=self.parse_article)

    def parse_article(self, response: Response) -> Iterator[Article | Request]:
        """A story: one Article, and its related stories.

        @site_path /item/4
        @returns items 1 1
        @returns requests 1
        @scrapes url headline author published section
        """
        if not isinstance(response, TextResponse) or not response.css("article[itemtype$=NewsArticle]"):
            return
        yield Article(
            url=response.url,
            headline=(response.css("[itemprop=headline]::text").get() or "").strip(),
            author=response.css("[itemprop=author]::text").get(),
            published=response.css("[itemprop=datePublished]::attr(datetime)").get(),
            section=response.css("[itemprop=articleSection]::text").get(),
        )
        yield from response.follow_all(css="a.related", callback=self.parse_article)
