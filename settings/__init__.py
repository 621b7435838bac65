"""Base Scrapy settings of the project (``scrapy.cfg``: ``[settings] default = settings``).

Environment-dependent values come from :mod:`settings.env`. A deployment can
keep its own module ``settings/<env>.py`` that does ``from settings import *``
and overrides what it needs, selected with ``SCRAPY_SETTINGS_MODULE``.
"""

from __future__ import annotations

from pathlib import Path

from .env import LOG_LEVEL, MONGO_DATABASE, MONGO_URI, REDIS_URL, RESOLVE_HOSTS

__all__ = ["LOG_LEVEL", "MONGO_DATABASE", "MONGO_URI", "REDIS_URL", "RESOLVE_HOSTS"]

BOT_NAME = "crawler"
SPIDER_MODULES = ["crawler.spiders"]
NEWSPIDER_MODULE = "crawler.spiders"
# `scrapy crawl` that reports a crawl unable to start as one ERROR line (crawler/commands/crawl.py).
COMMANDS_MODULE = "crawler.commands"
# `scrapy check`'s @site_path contract: a path on the spider's site (crawler/contracts.py).
SPIDER_CONTRACTS = {"crawler.contracts.SitePathContract": 10}
# `scrapy genspider -t site NAME DOMAIN`: the project's templates, Scrapy's own still listed
# (crawler/commands/genspider.py, docs/spiders.md).
TEMPLATES_DIR = str(Path(__file__).resolve().parent.parent / "crawler" / "templates")

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
# `python -m bench concurrent_items`: see bench/RESULTS.md, "Tuning".
CONCURRENT_ITEMS = 8

# The telnet console executes arbitrary Python for anyone who can reach its
# port. Off here; opt in with -s TELNETCONSOLE_ENABLED=1 (and set a password).
TELNETCONSOLE_ENABLED = False
# Scrapy 2.19's remote-control extension runs code sent to a local HTTP port.
# Off here; opt in with -s REMOTE_CONTROL_ENABLED=1.
REMOTE_CONTROL_ENABLED = False

# Scrapy's downloader with CONCURRENT_REQUESTS_PER_DOMAIN enforced for requests
# that reach a download slot together (crawler/scrapy_internals.py, Scrapy 2.19).
DOWNLOADER = "crawler.scrapy_internals.Downloader"

# Shared frontier: our scheduler on scrapy-redis's data model (crawler/frontier/scheduler.py).
SCHEDULER = "crawler.frontier.scheduler.FrontierScheduler"

# FRONTIER_* settings and their defaults (workers run as services that wait for
# seeds until FRONTIER_IDLE_CLOSE_SECONDS is set): docs/frontier.md.

# Validate -> enrich -> journal + bulk upsert (docs/pipelines.md).
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
    "crawler.extensions.stats_file.StatsFileExtension": 900,
    "crawler.extensions.gc_tuning.GcTuning": 0,
    # A Prometheus endpoint per worker, off until METRICS_ENABLED (docs/metrics.md).
    "crawler.extensions.metrics.MetricsExtension": 500,
}
# Freeze start-up objects and collect the young generation less often once
# the engine runs: ~13% of a worker's CPU was the collector (docs/settings.md, "GC tuning").
GC_TUNING_ENABLED = True

FEED_EXPORT_ENCODING = "utf-8"

DOWNLOADER_MIDDLEWARES = {
    # Scrapy 2.19's robots.txt middleware lets requests that wait for a host's
    # robots.txt through unchecked when several wait at once (middlewares/robotstxt.py).
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "middlewares.robotstxt.RobotsTxtMiddleware": 100,
    # Before OffsiteMiddleware (50): robots.txt is read for every host a
    # request goes to, an offsite seed's host included.
    "middlewares.robotstxt.RobotsTxtOffsiteMiddleware": 49,
    # After HttpProxyMiddleware (750): proxied requests are not bound.
    "middlewares.ipv6_bind.middleware.IPv6BindMiddleware": 760,
    # Outside every other middleware: sees only what RetryMiddleware gave up on
    # (crawler/frontier/failures.py), for the frontier's failed list.
    "crawler.frontier.failures.FrontierFailuresMiddleware": 30,
}
# Random IPv6 source addresses: off until the host routes a prefix to itself
# (docs/ipv6-bind.md).
# The other IPV6_BIND_* settings and their defaults: docs/ipv6-bind.md.
IPV6_BIND_ENABLED = False

# Cluster-wide per-website byte budgets (middlewares/byte_budget/, docs/byte-budget.md).
# On, so run-time budgets (`python -m middlewares.byte_budget
# set ...`) reach running workers; with no budget configured it costs one
# dictionary lookup per request. 840: after HttpCompressionMiddleware (590) on
# the way in, so it counts the response before it is decompressed, and before
# DownloaderStats (850), so a request it sends back to the frontier is not
# counted as a downloader request.
# No budget anywhere until BYTE_BUDGET_DEFAULT / BYTE_BUDGET_PER_WEBSITE or the CLI
# sets one; every BYTE_BUDGET_* setting: docs/byte-budget.md.
BYTE_BUDGET_ENABLED = True
DOWNLOADER_MIDDLEWARES["middlewares.byte_budget.middleware.ByteBudgetMiddleware"] = 840

# Politeness under pressure, cluster-wide (middlewares/politeness/, docs/politeness.md):
# Retry-After and backoff, circuit breaker, robots.txt Crawl-delay and request
# rates, shared by every worker through Redis. On: a website with no signal and
# no limit costs two dictionary lookups per request. 560: right after Scrapy's
# RetryMiddleware (550), so its process_response / process_exception run first
# (they are called from the downloader outwards) and take 429/503 over before
# RetryMiddleware could spend a retry on them; and before the IPv6 bind (760)
# and the byte budget (840), so a request held back here binds no address and
# reserves no bytes. Every POLITENESS_* setting: docs/politeness.md.
POLITENESS_ENABLED = True
DOWNLOADER_MIDDLEWARES["middlewares.politeness.middleware.PolitenessMiddleware"] = 560
