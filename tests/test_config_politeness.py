"""Politeness settings and the pure signal arithmetic, without a crawler or a server."""

from __future__ import annotations

import email.utils
from typing import Any

import pytest
from scrapy.settings import Settings
from twisted.internet.error import ConnectionRefusedError as TxConnectionRefusedError

from middlewares.politeness.config import PolitenessConfig, Rate, parse_rate
from middlewares.politeness.signals import FAIL, RATE, backoff_delay, classify_status, parse_retry_after


def config(**values: Any) -> PolitenessConfig:
    return PolitenessConfig.from_settings(Settings({"REDIS_URL": "redis://localhost:1/0", **values}))


def test_defaults_follow_stormcrawler() -> None:
    c = config()
    assert c.retry_after_statuses == {429, 503}
    assert (c.backoff_base, c.backoff_factor, c.backoff_max, c.backoff_forgive, c.backoff_jitter) == (
        60, 2, 86400, 1800, 0.1)
    assert c.rate_default is None and c.rate_per_website == {}
    assert c.probe_timeout == 190  # DOWNLOAD_TIMEOUT + 10
    assert TxConnectionRefusedError in c.breaker_exceptions or OSError in c.breaker_exceptions
    assert c.probe_wait == 0.5 and c.max_requeues == 3


@pytest.mark.parametrize(("raw", "rate"), [
    ("10/60", Rate(10, 60)), (" 5 / 0.5s ", Rate(5, 0.5)), ([3, 2], Rate(3, 2)), (None, None), ("none", None),
    ("", None),
])
def test_parse_rate_accepts(raw: Any, rate: Rate | None) -> None:
    assert parse_rate("X", raw) == rate


@pytest.mark.parametrize("raw", ["10", "0/60", "10/0", "-1/5", "ten/60", 10, [1, 2, 3]])
def test_parse_rate_rejects_naming_setting_and_value(raw: Any) -> None:
    with pytest.raises(ValueError, match="X must be") as info:
        parse_rate("X", raw)
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize(("name", "value"), [
    ("POLITENESS_BACKOFF_BASE_SECONDS", 0), ("POLITENESS_BACKOFF_FACTOR", 0.5), ("POLITENESS_BACKOFF_JITTER", 1),
    ("POLITENESS_BREAKER_FAILURES", 0), ("POLITENESS_RETRY_AFTER_STATUSES", [429, 700]),
    ("POLITENESS_RATE_PER_WEBSITE", {"a.test": "fast"}), ("POLITENESS_RATE_PER_WEBSITE", "[1]"),
    ("POLITENESS_BREAKER_EXCEPTIONS", ["builtins.int"]), ("POLITENESS_REFRESH_SECONDS", "soon"),
    ("POLITENESS_ADAPTIVE_DECREASE", 1), ("POLITENESS_ADAPTIVE_INCREASE", 1), ("POLITENESS_ADAPTIVE_MIN_RATE", 0),
    ("POLITENESS_ADAPTIVE_LATENCY_FACTOR", 0.5), ("POLITENESS_ADAPTIVE_WINDOW_SECONDS", 0),
    ("POLITENESS_ADAPTIVE_WEBSITES", [3]),
])
def test_bad_values_stop_the_crawl_naming_the_setting(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name.split("[", maxsplit=1)[0]):
        config(**{name: value})


def test_adaptive_slow_down_is_off_by_default_and_on_per_website() -> None:
    assert not config().adaptive.websites and not config().adaptive.applies("shop-a.test")
    some = config(POLITENESS_ADAPTIVE_WEBSITES="Shop-A.test, b.test").adaptive
    assert some.applies("shop-a.test") and some.applies("b.test") and not some.applies("c.test")
    assert config(POLITENESS_ADAPTIVE_WEBSITES=["*"]).adaptive.applies("c.test")


@pytest.mark.parametrize(("rps", "rate"), [(40.5, Rate(40, 1.0)), (1, Rate(1, 1.0)), (0.5, Rate(1, 2.0)),
                                           (0.2, Rate(1, 5.0))])
def test_a_rate_per_second_as_a_gate(rps: float, rate: Rate) -> None:
    assert Rate.from_per_second(rps) == rate


def test_per_website_rates_from_json_and_none() -> None:
    c = config(POLITENESS_RATE_PER_WEBSITE='{"Shop-A.test.": "5/10", "b.test": null}')
    assert c.rate_per_website == {"shop-a.test": Rate(5, 10), "b.test": None}


@pytest.mark.parametrize(("value", "expected"), [
    ("120", 120.0), (b"0", 0.0), (" 7 ", 7.0), ("", None), (None, None), ("soon", None), ("-5", None),
    ("1.5", None),
])
def test_retry_after_seconds(value: Any, expected: float | None) -> None:
    assert parse_retry_after(value, 1000.0) == expected


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0


def test_backoff_curve() -> None:
    c = config(POLITENESS_BACKOFF_BASE_SECONDS=60, POLITENESS_BACKOFF_MAX_SECONDS=86400)
    assert [backoff_delay(level, c, 0) for level in range(3)] == [60, 120, 240]
    assert backoff_delay(20, c, 0) == 86400
    assert backoff_delay(0, c, -1) == pytest.approx(54) and backoff_delay(0, c, 1) == pytest.approx(66)


def test_classify_status() -> None:
    c = config()
    assert (classify_status(429, c), classify_status(503, c), classify_status(500, c), classify_status(200, c),
            classify_status(404, c)) == (RATE, RATE, FAIL, None, None)
