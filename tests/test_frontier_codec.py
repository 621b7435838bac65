"""The frontier's request encoding: every field survives, bad requests fail loudly."""

from __future__ import annotations

import json

import pytest
from scrapy import FormRequest, Request
from scrapy.http import JsonRequest
from scrapy.utils.test import get_crawler

from crawler.frontier.codec import UndecodableRequestError, UnencodableRequestError, decode_request, encode_request
from tests.frontier_helpers import CodecSpider

FIELDS = ("url", "method", "body", "meta", "cb_kwargs", "cookies", "priority", "dont_filter", "flags",
          "encoding", "callback", "errback")


@pytest.fixture
def spider() -> CodecSpider:
    return CodecSpider.from_crawler(get_crawler(CodecSpider))


def full_request(spider: CodecSpider) -> Request:
    return Request(
        "https://www.example.co.uk/a%20b?q=1&x=%C3%A9#frag",
        method="PUT",
        headers={"X-Multi": ["one", "two"], "X-Bytes": b"\xff\x00raw", "Accept-Language": "fr"},
        body=b"\x00\x01\xfe binary body",
        meta={"depth": 3, "download_timeout": 12.5, "redirect_urls": ["http://a/", "http://b/"],
              "bindaddress": ("2001:db8::1", 0), "raw": b"\x00\xff", "int_keys": {1: "one", 2: [None, True]},
              "$weird": {"$b": "not bytes"}, "nested": {"t": (1, (2, b"3")), "empty": {}}, "none": None},
        cb_kwargs={"page": 7, "tags": ("a", "b"), "price": 1.25},
        cookies={"session": "abc"},
        priority=-5,
        dont_filter=True,
        flags=["cached", "from-seed"],
        encoding="latin-1",
        callback=spider.parse_item,
        errback=spider.on_error,
    )


def assert_same(a: Request, b: Request) -> None:
    assert type(a) is type(b)
    for field in FIELDS:
        assert getattr(a, field) == getattr(b, field), field
    assert a.headers.to_unicode_dict() == b.headers.to_unicode_dict()
    assert dict(a.headers) == dict(b.headers)


def test_every_field_round_trips(spider: CodecSpider) -> None:
    request = full_request(spider)
    data = encode_request(request, spider)
    json.loads(data)  # plain JSON
    assert b"pickle" not in data
    back = decode_request(data, spider)
    assert_same(request, back)
    assert back.callback == spider.parse_item and back.errback == spider.on_error
    assert type(back.meta["bindaddress"]) is tuple and type(back.meta["raw"]) is bytes
    assert back.meta["int_keys"] == {1: "one", 2: [None, True]}
    assert back.meta["$weird"] == {"$b": "not bytes"}


@pytest.mark.parametrize("request_factory", [
    lambda s: Request("http://example.com/"),
    lambda s: Request("http://example.com/", body="héllo", cookies=[{"name": "a", "value": "b", "domain": "x"}]),
    lambda s: FormRequest("http://example.com/form", formdata={"a": "1", "b": ["2", "3"]}, callback=s.parse),
    lambda s: JsonRequest("http://example.com/api", data={"x": [1, 2]}, dumps_kwargs={"sort_keys": True}),
])
def test_request_kinds_round_trip(spider: CodecSpider, request_factory: object) -> None:
    request = request_factory(spider)  # type: ignore[operator]
    back = decode_request(encode_request(request, spider), spider)
    assert_same(request, back)
    if isinstance(request, JsonRequest):
        assert back.dumps_kwargs == {"sort_keys": True}  # type: ignore[attr-defined]


class Opaque:
    pass


@pytest.mark.parametrize(("make", "message"), [
    (lambda s: Request("http://x/", callback=lambda r: None), "callback"),
    (lambda s: Request("http://x/", errback=print), "errback"),
    (lambda s: Request("http://x/", meta={"obj": Opaque()}), "meta['obj']"),
    (lambda s: Request("http://x/", meta={"deep": [{"s": {1, 2}}]}), "meta['deep'][0]['s']"),
    (lambda s: Request("http://x/", meta={"nan": float("nan")}), "meta['nan']"),
    (lambda s: Request("http://x/", cb_kwargs={"when": Opaque}), "cb_kwargs['when']"),
])
def test_unencodable_requests_name_the_field(spider: CodecSpider, make: object, message: str) -> None:
    with pytest.raises(UnencodableRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        encode_request(make(spider), spider)  # type: ignore[operator]


def test_callback_of_another_spider_is_refused(spider: CodecSpider) -> None:
    other = CodecSpider.from_crawler(get_crawler(CodecSpider))
    with pytest.raises(UnencodableRequestError, match="not a method of the spider"):
        encode_request(Request("http://x/", callback=other.parse_item), spider)


@pytest.mark.parametrize("payload", [
    b"not json",
    b"[1, 2]",
    b'{"v": 99, "url": "http://x/"}',
    b'{"v": 1, "url": "http://x/"}',  # fields missing
    json.dumps({**json.loads(encode_request(Request("http://x/"), None)), "class": "os.system"}).encode(),
    json.dumps({**json.loads(encode_request(Request("http://x/"), None)),
                "class": "some.module.never.imported.Request"}).encode(),
    json.dumps({**json.loads(encode_request(Request("http://x/"), None)), "callback": "no_such_method"}).encode(),
])
def test_bad_payloads_are_refused(spider: CodecSpider, payload: bytes) -> None:
    with pytest.raises(UndecodableRequestError):
        decode_request(payload, spider)


def test_defaults_are_not_stored() -> None:
    payload = encode_request(Request("http://shop.test/item-1", meta={"depth": 1}), None)
    assert json.loads(payload) == {"v": 2, "url": "http://shop.test/item-1", "meta": {"depth": 1}}


def test_version_1_payloads_are_still_read(spider: CodecSpider) -> None:
    v1 = {"v": 1, "url": "http://x.test/a", "method": "POST", "headers": [["Accept", ["text/html"]]], "body": "q=1",
          "meta": {"depth": 2}, "cb_kwargs": {}, "cookies": {}, "priority": 3, "dont_filter": True, "flags": [],
          "encoding": "utf-8", "callback": "parse_item", "errback": None}
    r = decode_request(json.dumps(v1).encode(), spider)
    assert (r.url, r.method, r.body, r.meta, r.priority, r.dont_filter, r.callback) == (
        "http://x.test/a", "POST", b"q=1", {"depth": 2}, 3, True, spider.parse_item)
    assert r.headers.getlist("Accept") == [b"text/html"]
