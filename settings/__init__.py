"""Base Scrapy settings of the project (``scrapy.cfg``: ``[settings] default = settings``).

Environment-dependent values come from :mod:`settings.env`. A deployment can
keep its own module ``settings/<env>.py`` that does ``from settings import *``
and overrides what it needs, selected with ``SCRAPY_SETTINGS_MODULE``.
"""

from __future__ import annotations

from .env import LOG_LEVEL, MONGO_DATABASE, MONGO_URI, REDIS_URL, RESOLVE_HOSTS

__all__ = ["LOG_LEVEL", "MONGO_DATABASE", "MONGO_URI", "REDIS_URL", "RESOLVE_HOSTS"]

BOT_NAME = "crawler"
SPIDER_MODULES = ["crawler.spiders"]
NEWSPIDER_MODULE = "crawler.spiders"

TWISTED_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
# Our resolver: RESOLVE_HOSTS entries first, then the system resolver for
# IPv4 and IPv6 (Scrapy's default resolver is IPv4-only).
TWISTED_DNS_RESOLVER = "crawler.resolver.StaticHostResolver"

ROBOTSTXT_OBEY = True
USER_AGENT = "crawler (+https://example.invalid/crawler-bot)"
CONCURRENT_REQUESTS = 32
CONCURRENT_REQUESTS_PER_DOMAIN = 16
DOWNLOAD_DELAY = 0
# Scrapy starts one task per item slot for every response; the default of 100
# costs ~1.75x throughput on 2 cores (scrapy/scrapy#5182). Measured with
# `python -m bench concurrent_items`: see README, "Tuning".
CONCURRENT_ITEMS = 8

# The telnet console executes arbitrary Python for anyone who can reach its
# port. Off here; opt in with -s TELNETCONSOLE_ENABLED=1 (and set a password).
TELNETCONSOLE_ENABLED = False
# Scrapy 2.19's remote-control extension runs code sent to a local HTTP port.
# Off here; opt in with -s REMOTE_CONTROL_ENABLED=1.
REMOTE_CONTROL_ENABLED = False

# Scrapy's downloader with CONCURRENT_REQUESTS_PER_DOMAIN enforced for requests
# that reach a download slot together (crawler/downloader.py, Scrapy 2.19).
DOWNLOADER = "crawler.downloader.Downloader"

# Shared frontier: our scheduler on scrapy-redis's data model (crawler/scheduler.py).
SCHEDULER = "crawler.scheduler.FrontierScheduler"

# Close a worker after the shared frontier has been empty, with this worker
# idle, for this many seconds; 0 runs it as a service that waits for seeds.
FRONTIER_IDLE_CLOSE_SECONDS = 0.0
# How often an idle worker looks at the shared frontier for new work.
FRONTIER_IDLE_POLL_SECONDS = 0.25

# Validate -> enrich -> journal + bulk upsert (README, "Item pipelines").
ITEM_PIPELINES = {
    "pipelines.validate.ValidatePipeline": 300,
    "pipelines.enrich.EnrichPipeline": 400,
    "pipelines.mongo_writer.MongoWriterPipeline": 800,
}
# Closest to the engine, so it sees the items every other middleware let through.
SPIDER_MIDDLEWARES = {
    "pipelines.item_context.ItemContextMiddleware": 10,
}
VALIDATE_SCHEMAS = {
    "crawler.items.Product": "crawler.schemas.PRODUCT",
    "crawler.items.Article": "crawler.schemas.ARTICLE",
}
MONGO_WRITER_COLLECTIONS = {
    "crawler.items.Product": "product",
    "crawler.items.Article": "article",
}

EXTENSIONS = {
    "crawler.stats_file.StatsFileExtension": 900,
    "crawler.gc_tuning.GcTuning": 0,
}
# Freeze start-up objects and collect the young generation less often once
# the engine runs: ~13% of a worker's CPU was the collector (README, "GC tuning").
GC_TUNING_ENABLED = True

FEED_EXPORT_ENCODING = "utf-8"

DOWNLOADER_MIDDLEWARES = {
    # Scrapy 2.19's robots.txt middleware lets requests that wait for a host's
    # robots.txt through unchecked when several wait at once (middlewares/robotstxt.py).
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "middlewares.robotstxt.RobotsTxtMiddleware": 100,
    # After HttpProxyMiddleware (750): proxied requests are not bound.
    "middlewares.ipv6_bind.IPv6BindMiddleware": 760,
}
# Random IPv6 source addresses: off until the host routes a prefix to itself
# (see README, "IPv6 source addresses").
IPV6_BIND_ENABLED = False
IPV6_BIND_PREFIXES: list[str] = []
IPV6_BIND_POLICY = "sticky"
IPV6_BIND_STICKY_ADDRESSES = 2
IPV6_BIND_STICKY_REQUESTS = 1000
IPV6_BIND_STICKY_SECONDS = 300.0
IPV6_BIND_IPV4_TARGETS = "fetch"
IPV6_BIND_PARTITION = ""
IPV6_BIND_CLOSE_CONNECTIONS = True
IPV6_BIND_SELF_CHECK = True

# Cluster-wide per-website byte budgets (middlewares/byte_budget.py, README
# "Byte budget"). On, so run-time budgets (`python -m middlewares.byte_budget
# set ...`) reach running workers; with no budget configured it costs one
# dictionary lookup per request. 950: next to the downloader, so it counts the
# response before HttpCompressionMiddleware decompresses it.
BYTE_BUDGET_ENABLED = True
BYTE_BUDGET_DEFAULT = None  # bytes per window for every website; None: no budget
BYTE_BUDGET_PER_WEBSITE: dict[str, int | None] = {}
DOWNLOADER_MIDDLEWARES["middlewares.byte_budget.ByteBudgetMiddleware"] = 950
