"""Item types produced by the demo spiders."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Product:
    """A product page of a shop."""

    url: str
    title: str
    sku: str
    price: float | None
    currency: str | None
    in_stock: bool | None


@dataclass
class Article:
    """A news article."""

    url: str
    headline: str
    author: str | None
    published: str | None
    section: str | None
