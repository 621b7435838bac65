"""Downloader middlewares of the crawler project."""
