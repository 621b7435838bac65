"""The decoding gate: whatever comes out of Redis is untrusted input (docs/security.md).

Seeds come from whoever can push to a spider's seed list, frontier entries
from whoever can write to Redis. Before either becomes a request:

* **URL**: absolute ``http``/``https`` only (no ``file://``, ``data:``, ``s3://``...).
* **Size**: a seed over ``FRONTIER_MAX_SEED_BYTES``, an entry over
  ``FRONTIER_MAX_ENTRY_BYTES``, is refused before it is parsed.
* **Callbacks** (and errbacks): a public method (no leading ``_``) defined
  on the project's own spider classes, not one that Scrapy's, scrapy-redis's
  or the frontier's base classes define (``__init__``, ``from_crawler``,
  ``setup_redis``, ``spider_idle``, ``start``...), except ``parse`` and the
  names in ``FRONTIER_CALLBACK_ALLOW``.
* **Seed meta**: only the keys in :data:`SEED_META_DEFAULT` and
  ``FRONTIER_SEED_META_ALLOW``; any other key is dropped (one WARNING per key
  per worker, stat ``frontier/gate/meta_dropped``).
* **Entry meta**: the capability keys (:func:`is_capability_key`: proxy,
  robots.txt and offsite bypass, bind address, byte budget bypass, download
  slot, ``frontier_*``) are dropped unless listed in
  ``FRONTIER_ENTRY_META_ALLOW``; a stored entry's download slot is its website's.
* **Not-before marks**: at most ``FRONTIER_MAX_NOT_BEFORE_SECONDS`` ahead
  (applied by the scheduler, :meth:`GateConfig.cap_not_before`).

A refused seed or entry raises :class:`GateError` (a ``ValueError``) whose
``reason`` is a small stats dimension (``scheme``, ``size``, ``callback``,
``format``). :func:`parse_seed` is the one seed check, shared by the workers
and ``python -m crawler seed``.

Settings: ``FRONTIER_MAX_SEED_BYTES``, ``FRONTIER_MAX_ENTRY_BYTES``,
``FRONTIER_SEED_META_ALLOW``, ``FRONTIER_ENTRY_META_ALLOW``,
``FRONTIER_CALLBACK_ALLOW``, ``FRONTIER_MAX_NOT_BEFORE_SECONDS``.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from w3lib.url import parse_url

from crawler.setting_values import float_setting, int_setting

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

# Scrapy meta keys a seed may set without any setting: they only narrow what
# the crawler does with the seed's own response.
SEED_META_DEFAULT = frozenset({
    "dont_redirect", "dont_retry", "handle_httpstatus_list", "handle_httpstatus_all", "referrer_policy",
    "dont_merge_cookies",
})
# Keys that let a request escape a safety rule; never read from a stored entry unless allowed.
_CAPABILITY_KEYS = frozenset({
    "proxy", "dont_obey_robotstxt", "allow_offsite", "bindaddress", "download_slot",
    "byte_budget_dont_count", "ipv6_bind_pin", "ipv6_bind_address", "ipv6_bind_connection_close",
})
_CAPABILITY_PREFIXES = ("frontier_", "_")
# Modules whose classes are the framework, not the project's spiders.
_BASE_MODULES = ("builtins", "scrapy", "scrapy_redis", "crawler.frontier")
# Fields of a JSON seed; every other key is form data (scrapy-redis).
SEED_FIELDS = ("url", "method", "meta", "priority", "headers", "body", "callback", "dont_filter")


class GateError(ValueError):
    """A seed or frontier entry refused by the gate; ``reason`` names the rule (a stats dimension)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_capability_key(key: str) -> bool:
    """True for a meta key that lets a request bypass a safety rule (proxy, robots.txt, offsite, ...)."""
    return key in _CAPABILITY_KEYS or key.startswith(_CAPABILITY_PREFIXES)


def _names(settings: BaseSettings, name: str) -> frozenset[str]:
    raw = settings.get(name) or []
    if isinstance(raw, str):
        raw = json.loads(raw) if raw.lstrip().startswith("[") else raw.split(",")
    if not isinstance(raw, list | tuple | set | frozenset) or not all(isinstance(k, str) for k in raw):
        raise ValueError(f"{name} must be a list of names, got {raw!r}")
    return frozenset(k.strip() for k in raw if k.strip())


@dataclass(frozen=True, slots=True)
class GateConfig:
    """The gate's settings, checked."""

    max_seed_bytes: int = 64 * 1024
    max_entry_bytes: int = 1024 * 1024
    seed_meta_allow: frozenset[str] = SEED_META_DEFAULT
    entry_meta_allow: frozenset[str] = frozenset()
    callback_allow: frozenset[str] = frozenset()
    max_not_before: float = 86_400.0

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        return cls(
            max_seed_bytes=int_setting(settings, "FRONTIER_MAX_SEED_BYTES", 64 * 1024, minimum=1),
            max_entry_bytes=int_setting(settings, "FRONTIER_MAX_ENTRY_BYTES", 1024 * 1024, minimum=1),
            seed_meta_allow=SEED_META_DEFAULT | _names(settings, "FRONTIER_SEED_META_ALLOW"),
            entry_meta_allow=_names(settings, "FRONTIER_ENTRY_META_ALLOW"),
            callback_allow=_names(settings, "FRONTIER_CALLBACK_ALLOW"),
            max_not_before=float_setting(settings, "FRONTIER_MAX_NOT_BEFORE_SECONDS", 86_400, minimum=0),
        )

    def cap_not_before(self, until: float, now: float) -> float:
        """``until`` no later than ``now + FRONTIER_MAX_NOT_BEFORE_SECONDS``."""
        return min(until, now + self.max_not_before)


def check_url(url: Any) -> str:
    """``url`` stripped, if it is an absolute http(s) URL; :class:`GateError` otherwise."""
    if not isinstance(url, str):
        raise GateError("format", f"url must be a string, got {url!r:.100}")
    url = url.strip()
    parsed = parse_url(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise GateError("scheme", f"url must be an absolute http(s) URL, got {url!r:.100}")
    return str(url)


def check_callback(spider_cls: type, name: Any, allow: frozenset[str] = frozenset(), what: str = "callback") -> str:
    """``name`` if it may be called for a request read from Redis; :class:`GateError` otherwise.

    Allowed: a public function defined on a class of the project's spider
    hierarchy that no base class (Scrapy, scrapy-redis, the frontier) defines,
    plus ``parse`` and the names in ``allow``.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise GateError("callback", f"{what} must be a method name, got {name!r:.50}")
    why = _callback_problem(spider_cls, name, allow)
    if why:
        raise GateError("callback", f"{what} {name!r} of spider {spider_cls.__name__} {why}")
    return name


def _callback_problem(spider_cls: type, name: str, allow: frozenset[str]) -> str | None:
    if name.startswith("_"):
        return "is private"
    owner = next((c for c in spider_cls.__mro__ if name in vars(c)), None)
    if owner is None:
        return "is not a method"
    if not inspect.isfunction(vars(owner)[name]):
        return "is not a plain method"
    if name in allow or name == "parse":
        return None
    if _is_base(owner) or any(_is_base(c) and name in vars(c) for c in spider_cls.__mro__):
        return "belongs to a base class, not to the spider's own methods (FRONTIER_CALLBACK_ALLOW)"
    return None


def _is_base(cls: type) -> bool:
    module = cls.__module__
    return any(module == m or module.startswith(m + ".") for m in _BASE_MODULES)


@dataclass(slots=True)
class Seed:
    """A seed that passed the gate: what is needed to build its request."""

    url: str
    method: str = "GET"
    meta: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    headers: dict[str, str] | None = None
    body: str = ""
    callback: str | None = None
    dont_filter: bool = True
    formdata: dict[str, Any] = field(default_factory=dict)
    dropped_meta: list[str] = field(default_factory=list)  # meta keys the gate removed

    def request(self, spider: Spider) -> Request:
        from scrapy import FormRequest, Request

        kwargs: dict[str, Any] = {
            "method": self.method, "meta": self.meta, "priority": self.priority, "headers": self.headers,
            "dont_filter": self.dont_filter,
            "callback": getattr(spider, self.callback) if self.callback else None,
        }
        if self.formdata:
            return FormRequest(self.url, formdata=self.formdata, **kwargs)
        return Request(self.url, body=self.body, **kwargs)


def check_seed_size(size: int, config: GateConfig) -> None:
    """:class:`GateError` if a seed of ``size`` bytes is over ``FRONTIER_MAX_SEED_BYTES``."""
    if size > config.max_seed_bytes:
        raise GateError("size", f"seed of {size} bytes is over FRONTIER_MAX_SEED_BYTES ({config.max_seed_bytes})")


def parse_seed(data: bytes, spider_cls: type, config: GateConfig, encoding: str = "utf-8") -> Seed:
    """Check one seed (a plain URL or a JSON object, docs/frontier.md); :class:`GateError` when refused."""
    check_seed_size(len(data), config)
    try:
        text = data.decode(encoding).strip()
    except UnicodeDecodeError as exc:
        raise GateError("format", f"not {encoding} text: {exc}") from None
    if not text.startswith("{"):
        return Seed(check_url(text))
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise GateError("format", f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise GateError("format", "a JSON seed must be an object")
    return _seed_from_object(obj, spider_cls, config)


def _seed_from_object(obj: dict[str, Any], spider_cls: type, config: GateConfig) -> Seed:
    seed = Seed(check_url(obj.get("url")))
    method, meta, priority = obj.get("method", "GET"), obj.get("meta", {}), obj.get("priority", 0)
    headers, body, dont_filter = obj.get("headers"), obj.get("body", ""), obj.get("dont_filter", True)
    if not isinstance(method, str) or not method.isalpha():
        raise GateError("format", f"method must be an HTTP method name, got {method!r:.50}")
    if not isinstance(meta, dict):
        raise GateError("format", f"meta must be an object, got {meta!r:.100}")
    if type(priority) is not int:
        raise GateError("format", f"priority must be an integer, got {priority!r:.50}")
    if headers is not None and not (isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())):
        raise GateError("format", f"headers must be an object of strings, got {headers!r:.100}")
    if not isinstance(body, str):
        raise GateError("format", f"body must be a string, got {body!r:.50}")
    if not isinstance(dont_filter, bool):
        raise GateError("format", f"dont_filter must be true or false, got {dont_filter!r:.50}")
    callback = obj.get("callback")
    if callback is not None:
        seed.callback = check_callback(spider_cls, callback, config.callback_allow)
    formdata = {k: v for k, v in obj.items() if k not in SEED_FIELDS}
    if not all(isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
               for v in formdata.values()):
        raise GateError("format", f"form fields must be strings or lists of strings, got {formdata!r:.100}")
    seed.method, seed.priority, seed.headers, seed.body = method.upper(), priority, headers, body
    seed.dont_filter, seed.formdata = dont_filter, formdata
    seed.meta = {k: v for k, v in meta.items() if k in config.seed_meta_allow}
    seed.dropped_meta = sorted(k for k in meta if k not in config.seed_meta_allow)
    return seed


class MetaWarnings:
    """Counts dropped meta keys and warns once per key per worker."""

    def __init__(self, crawler: Crawler, spider: Spider | None) -> None:
        self.crawler = crawler  # its stats exist only once the crawl starts
        self.spider = spider
        self._warned: set[tuple[str, str]] = set()

    def dropped(self, source: str, keys: list[str], allow_setting: str) -> None:
        if not keys:
            return
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("frontier/gate/meta_dropped", len(keys))
        for key in keys:
            if (source, key) not in self._warned:
                self._warned.add((source, key))
                logger.warning("Meta key %(key)r of a %(source)s dropped (not in %(setting)s); "
                               "further drops of this key are only counted (frontier/gate/meta_dropped)",
                               {"key": key, "source": source, "setting": allow_setting},
                               extra={"spider": self.spider})


def filter_entry_meta(meta: dict[str, Any], website: str, config: GateConfig) -> list[str]:
    """Drop the capability keys of a stored entry's ``meta`` (in place); returns the dropped keys.

    The download slot is the entry's website (the queue it was popped from), as
    the scheduler set it when it stored the request: another slot is dropped.
    """
    allowed = config.entry_meta_allow
    ours = meta.get("ipv6_bind_address")
    if ours is not None and list(meta.get("bindaddress") or ()) == [ours, 0]:
        # A retried or redirected copy of a request IPv6BindMiddleware bound: it
        # forgets that binding itself (decided again), so this is no attack.
        for key in ("bindaddress", "ipv6_bind_address", "ipv6_bind_connection_close"):
            if key not in allowed:
                meta.pop(key, None)
    dropped = [k for k in meta if is_capability_key(k) and k not in allowed
               and not (k == "download_slot" and meta[k] == website)]
    for key in dropped:
        del meta[key]
    if "download_slot" not in allowed:
        meta["download_slot"] = website
    return dropped
