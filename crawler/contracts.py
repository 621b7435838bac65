"""A ``scrapy check`` contract for spiders whose site's address depends on where it runs.

``@site_path /item/4`` makes the sample request for ``/item/4`` of the
spider's site, ``CONTRACTS_SITE_URL`` with ``%(domain)s`` replaced by the
spider's first ``allowed_domains`` entry. A real site keeps the default
(``https://%(domain)s``); the demo site runs on a port chosen at start-up, so
a check against it passes ``-s CONTRACTS_SITE_URL=http://%(domain)s:PORT``.
Scrapy's own ``@url`` works as usual.

Setting: ``CONTRACTS_SITE_URL`` (str, default ``https://%(domain)s``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy.contracts import Contract

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_SITE_URL = "https://%(domain)s"


def site_url(template: str, domain: str, path: str) -> str:
    """``template`` for ``domain``, joined with the absolute ``path``."""
    if not path.startswith("/"):
        raise ValueError(f"@site_path needs a path starting with '/', got {path!r}")
    try:
        base = template % {"domain": domain}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"CONTRACTS_SITE_URL must contain only %(domain)s, got {template!r}") from exc
    return base.rstrip("/") + path


class SitePathContract(Contract):
    """``@site_path /path``: the sample URL is this path on the spider's site."""

    name = "site_path"

    def __init__(self, method: Callable[..., Any], *args: Any) -> None:
        super().__init__(method, *args)
        spider = getattr(method, "__self__")  # noqa: B009  # ContractsManager binds each callback to the spider
        domains = getattr(spider, "allowed_domains", None) or []
        if not domains or len(args) != 1:
            raise ValueError(f"@site_path needs one path and a spider with allowed_domains ({spider.name})")
        template = spider.settings.get("CONTRACTS_SITE_URL") or DEFAULT_SITE_URL
        self.url = site_url(str(template), domains[0], str(args[0]))

    def adjust_request_args(self, args: dict[str, Any]) -> dict[str, Any]:
        args["url"] = self.url
        return args
