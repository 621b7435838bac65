"""Scrapy extensions of the project: GC tuning and the stats file."""
