"""Every setting the project's code reads has a heading in the reference (docs/)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from scrapy.settings import default_settings

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crawler", "middlewares", "pipelines", "settings")
_SETTING = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
# Settings getters of scrapy.settings.BaseSettings, and the project's own checked getters.
_GETTERS = {"get", "getint", "getfloat", "getbool", "getlist", "getdict", "getdictorlist", "getwithbase",
            "getpriority", "int_setting", "float_setting"}


def _settings_read_by_code() -> dict[str, str]:
    """Setting name -> a file that reads it (a string literal passed to a settings getter)."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name not in _GETTERS or ast.unparse(func).startswith("os.environ"):
                    continue
                for arg in node.args[:2]:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _SETTING.match(arg.value):
                        found.setdefault(arg.value, str(path.relative_to(ROOT)))
    return found


def _documented() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "docs").glob("*.md"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line))
    return names


def test_the_scan_finds_settings() -> None:
    # Guards the scan itself: these are read through different getters.
    read = _settings_read_by_code()
    assert {"FRONTIER_PREFETCH", "BYTE_BUDGET_DEFAULT", "IPV6_BIND_POLICY", "MONGO_WRITER_BATCH_SIZE"} <= set(read)


def test_every_setting_the_code_reads_is_in_the_reference() -> None:
    scrapy_own = {name for name in dir(default_settings) if name.isupper()}
    missing = {name: where for name, where in _settings_read_by_code().items()
               if name not in scrapy_own and name not in _documented()}
    assert not missing, f"settings read by the code but without a heading in docs/*.md: {missing}"
