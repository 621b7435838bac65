"""Carry the response an item came from to the item pipelines.

Scrapy's pipelines get the item, not the response. Enrichment needs the
response (status, size, fingerprint, source address, fetch time), and a
dead letter needs the URL it came from. :class:`ItemContextMiddleware`, a
spider middleware placed closest to the engine, records an
:class:`ItemContext` for every item a callback yields, in a side table keyed
by the item's identity (items need not be hashable, weak-referenceable or
have room for extra fields). The entry holds a reference to its item, so the
identity cannot be reused while the entry lives, and is removed when the
item leaves the pipeline chain (``item_scraped``, ``item_dropped``,
``item_error``).

Pipelines read it with ``item_contexts(crawler).get(item)``.

Settings:

``ITEM_CONTEXT_ENABLED`` (bool, default ``True``)
    Turn the middleware off (enrichment then has no response fields).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from scrapy import Request, signals
from scrapy.exceptions import NotConfigured

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.http import Response


@dataclass(slots=True)
class ItemContext:
    """Where one item came from, plus what pipelines add on its way."""

    source_url: str | None = None
    status: int | None = None
    response_bytes: int | None = None
    fingerprint: str | None = None
    fetched_at: datetime | None = None
    source_address: str | None = None
    # Filled by EnrichPipeline: fields for the stored document that the item
    # itself has no room for (a dataclass only takes its declared fields).
    enrichment: dict[str, Any] = field(default_factory=dict)
    # Names of the fields EnrichPipeline set on the item itself: not the
    # spider's, so left out of the item's dead-letter id.
    enriched_on_item: list[str] = field(default_factory=list)
    _ids: list[int] = field(default_factory=list)


class ItemContexts:
    """id(item) -> (item, ItemContext) for the items inside the pipeline chain."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, ItemContext]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, item: Any, context: ItemContext) -> None:
        context._ids.append(id(item))
        self._entries[id(item)] = (item, context)

    def get(self, item: Any) -> ItemContext | None:
        entry = self._entries.get(id(item))
        return entry[1] if entry is not None and entry[0] is item else None

    def alias(self, item: Any, replacement: Any) -> None:
        """``replacement`` (an item a pipeline returns instead of ``item``) shares its context."""
        context = self.get(item)
        if context is not None and replacement is not item:
            self.add(replacement, context)

    def discard(self, item: Any) -> None:
        context = self.get(item)
        if context is not None:
            for key in context._ids:
                self._entries.pop(key, None)


_registries: WeakKeyDictionary[Crawler, ItemContexts] = WeakKeyDictionary()


def item_contexts(crawler: Crawler) -> ItemContexts:
    """The side table of ``crawler``, created on first use."""
    registry = _registries.get(crawler)
    if registry is None:
        registry = _registries[crawler] = ItemContexts()
        for signal in (signals.item_scraped, signals.item_dropped, signals.item_error):
            crawler.signals.connect(_discarder(registry), signal=signal, weak=False)
    return registry


def _discarder(registry: ItemContexts) -> Any:
    def discard(item: Any, **kwargs: Any) -> None:
        registry.discard(item)

    return discard


def response_context(response: Response, fetched_at: datetime | None) -> ItemContext:
    """What an item's document needs to know about ``response``."""
    bind = response.request.meta.get("bindaddress") if response.request is not None else None
    if isinstance(bind, tuple | list) and bind:
        bind = bind[0]
    return ItemContext(
        source_url=response.url,
        status=response.status,
        response_bytes=len(response.body),
        fingerprint=hashlib.sha256(response.body).hexdigest(),
        fetched_at=fetched_at or datetime.now(UTC),
        source_address=str(bind) if bind else None,
    )


class ItemContextMiddleware:
    """Spider middleware: records each yielded item's response context."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.contexts = item_contexts(crawler)
        self._fetched: WeakKeyDictionary[Response, datetime] = WeakKeyDictionary()
        crawler.signals.connect(self._response_received, signal=signals.response_received)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("ITEM_CONTEXT_ENABLED", True):
            raise NotConfigured
        return cls(crawler)

    def _response_received(self, response: Response, **kwargs: Any) -> None:
        # Synchronous signal: only local state. The time the download ended.
        self._fetched[response] = datetime.now(UTC)

    def _record(self, response: Response, output: Any, context: ItemContext | None) -> ItemContext | None:
        if isinstance(output, Request) or self.contexts.get(output) is not None:
            return context
        if context is None:
            context = response_context(response, self._fetched.get(response))
        # One context per response, shared by its items: copy, since
        # pipelines add per-item enrichment to it.
        item_context = ItemContext(context.source_url, context.status, context.response_bytes,
                                   context.fingerprint, context.fetched_at, context.source_address)
        self.contexts.add(output, item_context)
        return context

    def process_spider_output(self, response: Response, result: Iterable[Any]) -> Iterator[Any]:
        context = None
        for output in result:
            context = self._record(response, output, context)
            yield output

    async def process_spider_output_async(self, response: Response, result: AsyncIterator[Any]) -> AsyncIterator[Any]:
        context = None
        async for output in result:
            context = self._record(response, output, context)
            yield output
