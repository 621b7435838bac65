"""JSON Schemas of the item types (``crawler.items``), checked by ``ValidatePipeline``.

Plain JSON Schema (2020-12) as Python dicts, referenced from
``VALIDATE_SCHEMAS`` in the settings. A spider's fields only: the enrichment
fields are added after validation.
"""

from __future__ import annotations

from typing import Any

_HTTP_URL = {"type": "string", "pattern": "^https?://[^/\\s]+"}
_TEXT = {"type": "string", "minLength": 1, "pattern": "\\S"}

PRODUCT: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Product",
    "type": "object",
    "required": ["url", "title", "sku", "price", "currency", "in_stock"],
    "additionalProperties": False,
    "properties": {
        "url": _HTTP_URL,
        "title": _TEXT,
        "sku": _TEXT,
        "price": {"type": ["number", "null"], "minimum": 0},
        "currency": {"type": ["string", "null"], "pattern": "^[A-Z]{3}$"},
        "in_stock": {"type": ["boolean", "null"]},
    },
}

ARTICLE: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Article",
    "type": "object",
    "required": ["url", "headline", "author", "published", "section"],
    "additionalProperties": False,
    "properties": {
        "url": _HTTP_URL,
        "headline": _TEXT,
        "author": {"type": ["string", "null"]},
        # ISO 8601 date or date-time, as the page's datetime attribute gives it.
        "published": {"type": ["string", "null"], "pattern": "^\\d{4}-\\d{2}-\\d{2}"},
        "section": {"type": ["string", "null"]},
    },
}
