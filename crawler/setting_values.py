"""Checked numeric settings: one rule and one error message for every component.

A bad value stops the crawl at start-up with a ``ValueError`` that names the
setting and the value (a setting that silently fell back to a default would
be a production incident).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings


def number_setting(
    settings: BaseSettings,
    name: str,
    default: float,
    *,
    minimum: float,
    exclusive: bool = False,
    integer: bool = False,
) -> float:
    """``settings[name]`` as a number ``>= minimum`` (``> minimum`` if ``exclusive``).

    With ``integer`` the value must be whole and an ``int`` is returned.
    """
    raw = settings.get(name, default)
    error = ValueError(
        f"{name} must be {'an integer' if integer else 'a number'} {'>' if exclusive else '>='} {minimum}, "
        f"got {raw!r}"
    )
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise error from None
    if math.isnan(value) or value < minimum or (exclusive and value == minimum):
        raise error
    if integer:
        if not value.is_integer():
            raise error
        return int(value)
    return value
