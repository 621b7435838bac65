"""Project settings, environment handling and packaging."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from scrapy.settings import Settings
from scrapy.spiderloader import get_spider_loader
from scrapy.utils.project import get_project_settings

from crawler.setting_values import dict_setting, float_setting, int_setting
from devtools.services import ROOT

if TYPE_CHECKING:
    from collections.abc import Callable


def project_settings(env: dict[str, str]) -> dict[str, str]:
    """Settings as a fresh process sees them under ``env`` (settings/env.py reads os.environ at import)."""
    code = (
        "import json; from scrapy.utils.project import get_project_settings as g; s = g(); "
        "print(json.dumps({k: str(s.get(k)) for k in "
        "('REDIS_URL', 'MONGO_URI', 'MONGO_DATABASE', 'RESOLVE_HOSTS', 'LOG_LEVEL')}))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MONGO_URI", "MONGO_DATABASE")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, check=True,
                         capture_output=True, text=True)
    import json

    return dict(json.loads(out.stdout))


def test_environment_variables_become_settings() -> None:
    s = project_settings({"REDIS_URL": "redis://10.9.8.7:6380/2", "MONGO_URI": "mongodb://db.invalid:27018",
                          "MONGO_DATABASE": "prod", "RESOLVE_HOSTS": "a.test:::1", "SCRAPY_LOG_LEVEL": "DEBUG"})
    assert s == {"REDIS_URL": "redis://10.9.8.7:6380/2", "MONGO_URI": "mongodb://db.invalid:27018",
                 "MONGO_DATABASE": "prod", "RESOLVE_HOSTS": "a.test:::1", "LOG_LEVEL": "DEBUG"}


def test_defaults_without_environment() -> None:
    s = project_settings({})
    assert s["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert s["MONGO_DATABASE"] == "crawler"


def test_safety_and_performance_defaults() -> None:
    s = get_project_settings()
    assert s.get("TWISTED_REACTOR") == "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
    # Both serve code execution to whoever reaches their port: opt-in only.
    assert s.getbool("TELNETCONSOLE_ENABLED") is False
    assert s.getbool("REMOTE_CONTROL_ENABLED") is False
    assert s.getint("CONCURRENT_ITEMS") == 8
    assert s.get("TWISTED_DNS_RESOLVER") == "crawler.resolver.StaticHostResolver"


def test_scrapy_list_shows_one_spider_per_site() -> None:
    scrapy = os.path.join(os.path.dirname(sys.executable), "scrapy")
    out = subprocess.run([scrapy, "list"], cwd=ROOT, check=True, capture_output=True, text=True)
    spiders = sorted(get_spider_loader(get_project_settings()).list())  # a new spider must not break this test
    assert out.stdout.split() == spiders
    assert {"news", "shop_a", "shop_b"} <= set(spiders)


def test_packages_import_cleanly() -> None:
    subprocess.run([sys.executable, "-W", "error", "-c", "import crawler, middlewares, pipelines, settings"],
                   cwd="/", check=True)


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_frontier_idle_setting_is_checked(redis_url: str, run_crawl, value: str) -> None:
    result = run_crawl("news", {"FRONTIER_IDLE_CLOSE_SECONDS": value}, env={"REDIS_URL": redis_url})
    assert result.returncode != 0
    # One ERROR naming the setting and the value, no unretrieved task.
    errors = [line for line in result.log.splitlines() if " ERROR: " in line]
    assert len(errors) == 1, result.log[-3000:]
    assert f"FRONTIER_IDLE_CLOSE_SECONDS must be a number >= 0, got '{value}'" in errors[0]
    assert "Task exception was never retrieved" not in result.log


@pytest.mark.parametrize(
    ("getter", "value", "kwargs", "expected"),
    [
        (float_setting, "2.5", {"minimum": 0}, 2.5),
        (float_setting, 0, {"minimum": 0}, 0.0),
        (int_setting, 3, {"minimum": 1}, 3),
        (int_setting, "4", {"minimum": 0, "exclusive": True}, 4),
        (int_setting, 1e6, {"minimum": 0}, 1_000_000),
        (int_setting, "1e6", {"minimum": 0}, 1_000_000),
    ],
)
def test_numeric_settings_accept(getter: Callable[..., float], value: object, kwargs: dict[str, Any],
                                 expected: float) -> None:
    result = getter(Settings({"X_SIZE": value}), "X_SIZE", 1, **kwargs)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("getter", "value", "kwargs", "message"),
    [
        (float_setting, "many", {"minimum": 0}, "X_SIZE must be a number >= 0, got 'many'"),
        (float_setting, -1, {"minimum": 0}, "X_SIZE must be a number >= 0, got -1"),
        (float_setting, 0, {"minimum": 0, "exclusive": True}, "X_SIZE must be a number > 0, got 0"),
        (float_setting, "nan", {"minimum": 0}, "X_SIZE must be a number >= 0, got 'nan'"),
        (float_setting, [1], {"minimum": 0}, "X_SIZE must be a number >= 0, got [1]"),
        (float_setting, True, {"minimum": 0}, "X_SIZE must be a number >= 0, got True"),
        (int_setting, 2.5, {"minimum": 1}, "X_SIZE must be an integer >= 1, got 2.5"),
        (int_setting, float("inf"), {"minimum": 0}, "X_SIZE must be an integer >= 0, got inf"),
    ],
)
def test_numeric_settings_reject_naming_setting_and_value(getter: Callable[..., float], value: object,
                                                          kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        getter(Settings({"X_SIZE": value}), "X_SIZE", 1, **kwargs)


@pytest.mark.parametrize(("value", "expected"), [
    ({"Shop-A.test": 5}, {"Shop-A.test": 5}),
    ('{"Shop-A.test": 5, "news.test": null}', {"Shop-A.test": 5, "news.test": None}),
    (None, {}),
    ("", {}),
])
def test_dict_settings_accept_dicts_and_json_objects(value: object, expected: dict[str, Any]) -> None:
    """Keys as given: each component normalizes its own (websites: lower case)."""
    assert dict_setting(Settings({"X_MAP": value}), "X_MAP") == expected
    assert dict_setting(Settings({}), "X_MAP") == {}


@pytest.mark.parametrize("value", ["[1, 2]", "{not json", 7, "null"])
def test_dict_settings_reject_naming_setting_and_value(value: object) -> None:
    message = f"X_MAP must be a dict or JSON object, got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        dict_setting(Settings({"X_MAP": value}), "X_MAP")
