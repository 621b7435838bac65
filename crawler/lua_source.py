"""Lua script sources of a package, with one level of ``-- @include <file>``.

Redis scripts cannot import each other; a script that says
``-- @include window.lua`` on a line of its own gets that file's text in its
place, so shared functions live in one file.
"""

from __future__ import annotations

from importlib.resources import files

_INCLUDE = "-- @include "


def script_source(package: str, name: str) -> str:
    """``<package>/lua/<name>`` with each ``-- @include <file>`` line replaced by that file."""
    lua = files(package).joinpath("lua")
    lines = lua.joinpath(name).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(lua.joinpath(line[len(_INCLUDE):].strip()).read_text(encoding="utf-8")
                   if line.startswith(_INCLUDE) else line for line in lines)
