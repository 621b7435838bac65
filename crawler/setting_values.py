"""Checked settings: one rule and one error message for every component.

A bad value stops the crawl at start-up with a ``ValueError`` that names the
setting and the value (a setting that silently fell back to a default would
be a production incident). Each component's ``Config.from_settings`` calls
these with its defaults; the defaults live there and nowhere else in code.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings


def parse_number(raw: object, error: ValueError) -> float:
    """``raw`` (an int, a float or a numeric string such as ``"1e6"``) as a float; raises ``error`` for
    anything else: bools, NaN, text, None."""
    if isinstance(raw, bool):
        raise error
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise error from None
    if math.isnan(value):
        raise error
    return value


def _checked(settings: BaseSettings, name: str, default: float, minimum: float, exclusive: bool,
             integer: bool) -> float:
    raw = settings.get(name, default)
    error = ValueError(
        f"{name} must be {'an integer' if integer else 'a number'} {'>' if exclusive else '>='} {minimum}, "
        f"got {raw!r}"
    )
    value = parse_number(raw, error)
    if value < minimum or (exclusive and value == minimum):
        raise error
    if integer and not value.is_integer():
        raise error
    return value


def int_setting(settings: BaseSettings, name: str, default: int, *, minimum: int, exclusive: bool = False) -> int:
    """``settings[name]`` as a whole number ``>= minimum`` (``> minimum`` if ``exclusive``); ``1e6`` is accepted."""
    return int(_checked(settings, name, default, minimum, exclusive, integer=True))


def float_setting(settings: BaseSettings, name: str, default: float, *, minimum: float,
                  exclusive: bool = False) -> float:
    """``settings[name]`` as a number ``>= minimum`` (``> minimum`` if ``exclusive``)."""
    return _checked(settings, name, default, minimum, exclusive, integer=False)


def dict_setting(settings: BaseSettings, name: str) -> dict[Any, Any]:
    """``settings[name]`` as a dict: a dict, a JSON object string (``-s NAME='{...}'``), or ``{}`` when unset.

    The keys are returned as given: each component normalizes its own.
    """
    raw = settings.get(name) or {}
    error = ValueError(f"{name} must be a dict or JSON object, got {raw!r}")
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            raise error from None
    if not isinstance(value, dict):
        raise error
    return dict(value)
