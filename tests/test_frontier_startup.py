"""A worker whose frontier cannot start says why once, naming the setting, and exits non-zero."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import CrawlResult

FOLLOW_ON = ("Scraper slot not assigned", "Engine slot not assigned", "Task exception was never retrieved",
             "AssertionError", "Traceback")


@pytest.mark.parametrize(("settings", "named"), [
    ({"FRONTIER_PREFETCH": "0"}, "FRONTIER_PREFETCH must be an integer >= 1, got '0'"),
    # REDIS_START_URLS_BATCH_SIZE defaults to CONCURRENT_REQUESTS: the message names the one the user set.
    ({"CONCURRENT_REQUESTS": "0"}, "CONCURRENT_REQUESTS must be an integer >= 1, got '0'"),
    ({"REDIS_URL": "redis://127.0.0.1:1/0"}, "REDIS_URL=redis://127.0.0.1:1/0"),
    ({"REDIS_URL": "{redis_url_wrong_user}"}, "REDIS_URL=redis://nobody:***@"),
])
def test_startup_error_is_one_clear_line(redis_url: str, run_crawl: Callable[..., CrawlResult],
                                         settings: dict[str, str], named: str) -> None:
    wrong_user = redis_url.replace("redis://", "redis://nobody:secret@")
    settings = {key: value.format(redis_url_wrong_user=wrong_user) for key, value in settings.items()}
    # The byte budget and politeness report their own Redis trouble; here only the frontier speaks.
    result = run_crawl("shop_a", {"REDIS_URL": redis_url, "ITEM_PIPELINES": "{}", "BYTE_BUDGET_ENABLED": "False",
                                  "POLITENESS_ENABLED": "False",
                                  "FRONTIER_IDLE_CLOSE_SECONDS": "1", **settings}, timeout=60)
    assert result.returncode != 0
    errors = [line for line in result.log.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.log[-3000:]
    assert "Frontier cannot start: " in errors[0] and named in errors[0]
    assert "secret" not in result.log
    assert not [marker for marker in FOLLOW_ON if marker in result.log], result.log[-3000:]
    assert "'finish_reason': 'frontier_startup_failed'" in result.log
