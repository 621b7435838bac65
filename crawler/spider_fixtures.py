"""Recorded pages a spider's callbacks are tested against offline.

A fixture is a folder ``tests/fixtures/<spider>/<name>/`` of files a reviewer
can read and edit:

``fixture.json``
    The request and the response: ``url``, ``callback`` (a method name of the
    spider), ``meta`` and ``cb_kwargs`` (JSON values), ``status``, and the
    response ``headers`` (name -> list of values).
``body.html`` (``body.bin`` when the page is not text)
    The response body, as the server sent it after decompression.
``output.json``
    What the callback yields, in order: ``{"item": {...}, "type": "module.Class"}``
    per item, ``{"request": {"url": ..., "callback": ...}}`` per request
    (``method``, ``priority``, ``meta``, ``cb_kwargs``, ``body`` only when set).

``scrapy savefixture`` (:mod:`crawler.commands.savefixture`) downloads a page
with the spider's settings and writes all three; :func:`replay` builds the
response from the first two, calls the callback without any network, and
:func:`output_diff` compares with the third (``tests/test_spider_fixtures.py``).
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter, is_item
from scrapy import Request
from scrapy.http import Headers, TextResponse
from scrapy.responsetypes import responsetypes

if TYPE_CHECKING:
    from pathlib import Path

    from scrapy import Spider
    from scrapy.http import Response

FIXTURE_FILE = "fixture.json"
OUTPUT_FILE = "output.json"
BODY_FILES = ("body.html", "body.bin")
# Meta keys Scrapy's own components set on every request: not part of a spider's output.
_SCRAPY_META = frozenset({"depth", "download_slot", "download_latency", "download_timeout", "_depth",
                          "_callback", "retry_times", "redirect_times", "redirect_ttl", "redirect_urls",
                          "redirect_reasons", "handle_httpstatus_list", "handle_httpstatus_all"})


@dataclass(slots=True)
class Fixture:
    """One recorded page and the callback it is for."""

    url: str
    callback: str
    status: int
    headers: dict[str, list[str]]
    body: bytes
    meta: dict[str, Any] = field(default_factory=dict)
    cb_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_response(cls, response: Response, callback: str, meta: dict[str, Any] | None = None,
                      cb_kwargs: dict[str, Any] | None = None) -> Fixture:
        headers = {k.decode("latin-1"): [v.decode("latin-1") for v in vs] for k, vs in response.headers.items()
                   if k.lower() not in (b"content-encoding", b"transfer-encoding", b"content-length")}
        return cls(response.url, callback, response.status, headers, response.body, meta or {}, cb_kwargs or {})

    def response(self) -> Response:
        """The response, with the request it answers (meta, cb_kwargs)."""
        request = Request(self.url, meta=self.meta, cb_kwargs=self.cb_kwargs, dont_filter=True)
        headers = Headers({k: v for k, v in self.headers.items()})
        cls = responsetypes.from_args(headers=headers, url=self.url, body=self.body)
        return cls(url=self.url, status=self.status, headers=headers, body=self.body, request=request)


def save(folder: Path, fixture: Fixture, output: list[dict[str, Any]]) -> None:
    """Write ``fixture`` and its expected ``output`` to ``folder`` (created, files replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in BODY_FILES:
        (folder / name).unlink(missing_ok=True)
    text = isinstance(fixture.response(), TextResponse)
    (folder / BODY_FILES[0 if text else 1]).write_bytes(fixture.body)
    described = {"url": fixture.url, "callback": fixture.callback, "meta": fixture.meta,
                 "cb_kwargs": fixture.cb_kwargs, "status": fixture.status, "headers": fixture.headers}
    (folder / FIXTURE_FILE).write_text(_dumps(described), encoding="utf-8")
    (folder / OUTPUT_FILE).write_text(_dumps(output), encoding="utf-8")


def load(folder: Path) -> tuple[Fixture, list[dict[str, Any]]]:
    """The fixture in ``folder`` and its expected output."""
    described = json.loads((folder / FIXTURE_FILE).read_text(encoding="utf-8"))
    body_file = next((folder / n for n in BODY_FILES if (folder / n).exists()), None)
    if body_file is None:
        raise FileNotFoundError(f"{folder}: no {' or '.join(BODY_FILES)}")
    fixture = Fixture(described["url"], described["callback"], int(described["status"]), described["headers"],
                      body_file.read_bytes(), described.get("meta") or {}, described.get("cb_kwargs") or {})
    return fixture, json.loads((folder / OUTPUT_FILE).read_text(encoding="utf-8"))


def fixture_folders(root: Path, spider: str) -> list[Path]:
    """The fixtures of ``spider`` under ``root`` (``tests/fixtures``), sorted."""
    base = root / spider
    return sorted(p for p in base.iterdir() if (p / FIXTURE_FILE).exists()) if base.is_dir() else []


def replay(spider: Spider, fixture: Fixture) -> list[dict[str, Any]]:
    """Call the fixture's callback on its recorded response, offline; what it yields, described."""
    return [describe(spider, out) for out in run_callback(spider, fixture)]


def run_callback(spider: Spider, fixture: Fixture) -> list[Any]:
    """The items and requests the fixture's callback yields from its recorded response, offline."""
    callback = getattr(spider, fixture.callback, None)
    if not callable(callback):
        raise ValueError(f"spider {spider.name!r} has no callback {fixture.callback!r}")
    response = fixture.response()
    result = callback(response, **fixture.cb_kwargs)
    if inspect.isasyncgen(result):
        results = asyncio.run(_collect(result))
    elif inspect.iscoroutine(result):
        results = asyncio.run(result)
    else:
        results = result
    return list(results or [])


async def _collect(agen: Any) -> list[Any]:
    return [out async for out in agen]


def describe(spider: Spider, out: Any) -> dict[str, Any]:
    """An item or request as JSON data."""
    if isinstance(out, Request):
        return {"request": _describe_request(spider, out)}
    if is_item(out):
        kind = type(out)
        return {"item": _jsonable(ItemAdapter(out).asdict()), "type": f"{kind.__module__}.{kind.__qualname__}"}
    raise TypeError(f"spider {spider.name!r} yielded {type(out).__name__}, neither an item nor a request")


def _describe_request(spider: Spider, request: Request) -> dict[str, Any]:
    callback = request.callback
    name = getattr(callback, "__name__", None) if callback is not None else "parse"
    desc: dict[str, Any] = {"url": request.url, "callback": name}
    if request.method != "GET":
        desc["method"] = request.method
    if request.priority:
        desc["priority"] = request.priority
    meta = {k: v for k, v in request.meta.items() if k not in _SCRAPY_META}
    if meta:
        desc["meta"] = _jsonable(meta)
    if request.cb_kwargs:
        desc["cb_kwargs"] = _jsonable(request.cb_kwargs)
    if request.body:
        desc["body"] = request.body.decode("utf-8", "replace")
    return desc


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def output_diff(expected: list[dict[str, Any]], actual: list[dict[str, Any]], name: str) -> str:
    """A unified diff of the expected and actual output (``""`` when equal)."""
    if expected == actual:
        return ""
    lines = difflib.unified_diff(_dumps(expected).splitlines(), _dumps(actual).splitlines(),
                                 f"{name}/{OUTPUT_FILE} (expected)", f"{name} (spider now)", lineterm="")
    return "\n".join(lines)
