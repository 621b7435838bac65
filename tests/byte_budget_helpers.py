"""Shared pieces of the byte budget middleware tests: settings, a run on a real crawler, responses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy.downloadermiddlewares.stats import get_header_size, get_status_size
from scrapy.http import Headers, HtmlResponse

from middlewares.byte_budget.middleware import ByteBudgetMiddleware
from tests.middleware_helpers import run_middleware
from tests.redis_clients import sync_redis

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from scrapy import Request


def settings(redis_url: str, **extra: Any) -> dict[str, Any]:
    # One reservation per download unless a test is about leases.
    return {"BYTE_BUDGET_ENABLED": True, "REDIS_URL": redis_url, "BYTE_BUDGET_KEY_PREFIX": "t",
            "BYTE_BUDGET_LEASE_DOWNLOADS": 1, **extra}


def run(redis_url: str, extra: dict[str, Any], body: Callable[[ByteBudgetMiddleware], Awaitable[None]]) -> Any:
    """Build the middleware on a real crawler and run ``body`` between open and close."""
    return run_middleware(ByteBudgetMiddleware, settings(redis_url, **extra), body)


def response(request: Request, body: bytes, status: int = 200, flags: list[str] | None = None) -> HtmlResponse:
    headers = Headers({"Content-Type": "text/html", "Content-Length": str(len(body))})
    return HtmlResponse(request.url, status=status, headers=headers, body=body, request=request, flags=flags)


def wire_size(resp: HtmlResponse) -> int:
    return len(resp.body) + get_header_size(resp.headers) + get_status_size(resp.status) + 4


def server_time(redis_url: str) -> float:
    with sync_redis(redis_url) as r:
        sec, usec = r.time()
    return sec + usec / 1e6
