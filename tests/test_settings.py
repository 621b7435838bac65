"""Project settings, environment handling and packaging."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from scrapy.utils.project import get_project_settings

from devtools.services import ROOT


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
    assert out.stdout.split() == ["news", "shop_a", "shop_b"]


def test_packages_import_cleanly() -> None:
    subprocess.run([sys.executable, "-W", "error", "-c", "import crawler, middlewares, pipelines, settings"],
                   cwd="/", check=True)


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_frontier_idle_setting_is_checked(redis_url: str, run_crawl, value: str) -> None:
    result = run_crawl("news", {"FRONTIER_IDLE_CLOSE_SECONDS": value}, env={"REDIS_URL": redis_url})
    assert result.returncode != 0
    assert f"ValueError: FRONTIER_IDLE_CLOSE_SECONDS must be a number of seconds >= 0, got '{value}'" in result.log
