"""Add crawl metadata to every item's stored document.

Fields (``None`` when unknown, e.g. an item not yielded from a response):

======================  ====================================================
``canonical_url``       w3lib ``canonicalize_url`` of the item's URL (its
                        ``ENRICH_URL_FIELD``, else the response URL)
``website``             ``crawler.website.website_key`` of that URL
                        (``WEBSITE_KEY`` mode: registrable domain by default)
``source_url``          URL of the response the item came from
``fetched_at``          when that response was downloaded (UTC datetime)
``spider``              spider name
``job_id``              crawl job id (``ENRICH_JOB_ID``)
``http_status``         response status
``response_bytes``      length of the response body (after decompression)
``content_fingerprint`` SHA-256 (hex) of the response body
``source_address``      local address the request was sent from (the
                        ``bindaddress`` meta key set by the IPv6 middleware)
======================  ====================================================

A field the spider set (present and not ``None``) is never overwritten.
Items whose type has room for a field (dicts, declared fields) get it set on
the item; otherwise it is kept in the item's context and merged into the
stored document by ``MongoWriterPipeline``.

Settings:

``ENRICH_ENABLED`` (bool, default ``True``)
``ENRICH_URL_FIELD`` (str, default ``"url"``)
    Item field holding the item's own URL.
``ENRICH_JOB_ID`` (str, default: the spider's ``_job`` argument, which
    scrapyd passes, else a random id per run)

Stats: ``enrich/enriched``, ``enrich/no_context`` (item not from a response).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.exceptions import NotConfigured
from w3lib.url import canonicalize_url

from crawler.website import website_key, website_key_mode
from pipelines.item_context import ItemContext, item_contexts

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

ENRICH_FIELDS = ("canonical_url", "website", "source_url", "fetched_at", "spider", "job_id", "http_status",
                 "response_bytes", "content_fingerprint", "source_address")


@dataclass(frozen=True, slots=True)
class EnrichConfig:
    url_field: str
    job_id: str | None
    website_mode: str

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        url_field = settings.get("ENRICH_URL_FIELD", "url")
        if not isinstance(url_field, str) or not url_field:
            raise ValueError(f"ENRICH_URL_FIELD must be a field name, got {url_field!r}")
        job_id = settings.get("ENRICH_JOB_ID") or None
        if job_id is not None and not isinstance(job_id, str):
            raise ValueError(f"ENRICH_JOB_ID must be a string, got {job_id!r}")
        return cls(url_field=url_field, job_id=job_id, website_mode=website_key_mode(settings))


class EnrichPipeline:
    """Adds canonical URL, website, fetch metadata and job id to each item."""

    def __init__(self, crawler: Crawler, config: EnrichConfig) -> None:
        assert crawler.stats is not None
        self.crawler = crawler
        self.stats = crawler.stats
        self.config = config
        self.contexts = item_contexts(crawler)
        self.job_id = config.job_id or ""
        self.spider_name: str | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("ENRICH_ENABLED", True):
            raise NotConfigured
        return cls(crawler, EnrichConfig.from_settings(crawler.settings))

    def open_spider(self) -> None:
        spider = self.crawler.spider
        self.spider_name = spider.name if spider is not None else None
        self.job_id = self.config.job_id or str(getattr(spider, "_job", "") or "") or uuid.uuid4().hex
        logger.info("Enriching items; job id %(job)s", {"job": self.job_id})

    def fields(self, item: Any, context: ItemContext | None) -> dict[str, Any]:
        """The enrichment fields for ``item``."""
        url = None
        if ItemAdapter.is_item(item):
            adapter = ItemAdapter(item)
            value = adapter.get(self.config.url_field) if self.config.url_field in adapter else None
            url = value if isinstance(value, str) and value else None
        if url is None and context is not None:
            url = context.source_url
        return {
            "canonical_url": canonicalize_url(url) if url else None,
            "website": website_key(url, self.config.website_mode) if url else None,
            "source_url": context.source_url if context else None,
            "fetched_at": context.fetched_at if context else None,
            "spider": self.spider_name,
            "job_id": self.job_id,
            "http_status": context.status if context else None,
            "response_bytes": context.response_bytes if context else None,
            "content_fingerprint": context.fingerprint if context else None,
            "source_address": context.source_address if context else None,
        }

    def process_item(self, item: Any) -> Any:
        context = self.contexts.get(item)
        if context is None:
            self.stats.inc_value("enrich/no_context")
            context = ItemContext()
            self.contexts.add(item, context)
        adapter = ItemAdapter(item)
        room = set(adapter.field_names()) if not isinstance(item, dict) else None
        for name, value in self.fields(item, context).items():
            if adapter.get(name) is not None if name in adapter else False:
                continue  # the spider set it
            if room is None or name in room:
                adapter[name] = value
                context.enriched_on_item.append(name)
            else:
                context.enrichment[name] = value
        self.stats.inc_value("enrich/enriched")
        return item
