"""The one place where environment variables become settings.

Everything that differs between a laptop, CI and production is read here, so
``settings/__init__.py`` stays a plain list of Scrapy settings.

=====================  ==============================  =========================
variable               setting                         default
=====================  ==============================  =========================
``REDIS_URL``          ``REDIS_URL``                   ``redis://127.0.0.1:6379/0``
``MONGO_URI``          ``MONGO_URI``                   ``mongodb://127.0.0.1:27017``
``MONGO_DATABASE``     ``MONGO_DATABASE``              ``crawler``
``RESOLVE_HOSTS``      ``RESOLVE_HOSTS``               (none)
``SCRAPY_LOG_LEVEL``   ``LOG_LEVEL``                   ``INFO``
=====================  ==============================  =========================
"""

from __future__ import annotations

import os

REDIS_URL: str = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
MONGO_URI: str = os.environ.get("MONGO_URI", "mongodb://127.0.0.1:27017")
MONGO_DATABASE: str = os.environ.get("MONGO_DATABASE", "crawler")
# curl --resolve style, comma separated: "shop-a.test:127.0.0.1,*.test:::1"
RESOLVE_HOSTS: str = os.environ.get("RESOLVE_HOSTS", "")
LOG_LEVEL: str = os.environ.get("SCRAPY_LOG_LEVEL", "INFO")
