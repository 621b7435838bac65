"""Settings for the vanilla Scrapy runs: Scrapy's defaults, plus only what is
needed to reach the demo site and to compare like for like (concurrency, log
level: Scrapy's default DEBUG logs a line per page and per item, which the
stack, at INFO, does not)."""

TWISTED_DNS_RESOLVER = "crawler.resolver.StaticHostResolver"  # to resolve *.test, as the stack does
EXTENSIONS = {"crawler.extensions.stats_file.StatsFileExtension": 900}
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False
ROBOTSTXT_OBEY = True
CONCURRENT_REQUESTS = 32
CONCURRENT_REQUESTS_PER_DOMAIN = 16

from settings.env import LOG_LEVEL, RESOLVE_HOSTS  # noqa: E402,F401  (the one place env vars are read)
