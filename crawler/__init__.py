"""Spiders, items and frontier glue of the crawler project."""
