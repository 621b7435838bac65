"""Scrapy commands of the project (``COMMANDS_MODULE = "crawler.commands"``)."""
