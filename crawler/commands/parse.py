"""``scrapy parse``, on Scrapy's in-memory scheduler (see :mod:`crawler.commands.one_off`)."""

from __future__ import annotations

from scrapy.commands.parse import Command as ScrapyCommand

from crawler.commands.one_off import OneOffMixin


class Command(OneOffMixin, ScrapyCommand):
    """Scrapy's ``parse`` without the shared frontier."""
