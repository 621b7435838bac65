"""Spiders used only by the tests (``-s SPIDER_MODULES=crawler.spiders,tests.spiders``)."""
