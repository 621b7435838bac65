"""Portable request encoding for the shared frontier: JSON, never pickle.

A request is stored as one UTF-8 JSON object (format version ``"v": 2``)::

    {"v": 2, "url": "https://example.com/a", "method": "GET",
     "headers": [["Accept", ["text/html"]]],          # latin-1 text of the raw bytes
     "body": "", "body_b64": null,                    # UTF-8 text, or base64 when not UTF-8
     "meta": {...}, "cb_kwargs": {...}, "cookies": {...} | [...],
     "priority": 0, "dont_filter": false, "flags": [], "encoding": "utf-8",
     "callback": "parse_item" | null, "errback": "on_error" | null,
     "class": "scrapy.http.request.form.FormRequest"}  # only for Request subclasses

Every field but ``v`` and ``url`` is left out when it has Request's default
value (GET, no headers, empty body, empty meta/cb_kwargs/cookies/flags,
priority 0, dont_filter false, utf-8, no callback/errback): a typical request
is ~90 bytes instead of ~220 in Redis (docs/frontier.md). Version 1 payloads
(every field present) are still read; a worker older than version 2 cannot
read version 2 payloads (they go to its dead list), so upgrade every worker
of a spider together.

Values in ``meta``, ``cb_kwargs`` and ``cookies`` are JSON values, plus three
tagged forms so that Python values survive the round trip exactly:
``{"$b": "<base64>"}`` is ``bytes``, ``{"$t": [...]}`` a tuple, and
``{"$d": [[key, value], ...]}`` a dict whose keys are not all strings or that
has a key starting with ``$``. Anything else (an object, a set, NaN, a
callback that is not a method of the spider, ...) raises
:class:`UnencodableRequestError` naming the field: the scheduler logs it, counts it
and stores nothing.

Decoding restores only :class:`scrapy.Request` subclasses whose module is
already imported, so a payload in a shared Redis cannot make a worker import
or instantiate arbitrary code. A stored payload is untrusted input: it goes
through the decoding gate (:mod:`crawler.frontier.gate`: size, http(s) only,
callbacks the spider's own public methods), and callbacks are checked by the
same rule when a request is stored.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from typing import TYPE_CHECKING, Any

from scrapy import Request

from crawler.frontier.gate import GateConfig, GateError, check_callback, check_url

if TYPE_CHECKING:
    from scrapy import Spider

FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
# Request's defaults: a field with its default value is not stored.
_DEFAULTS: dict[str, Any] = {"method": "GET", "headers": [], "body": "", "meta": {}, "cb_kwargs": {}, "cookies": {},
                             "priority": 0, "dont_filter": False, "flags": [], "encoding": "utf-8",
                             "callback": None, "errback": None}
_SCALARS = (str, int, float, bool, type(None))
_PLAIN = frozenset((str, int, bool, type(None)))  # JSON values as they are (a float must be finite)
# Fields passed to Request as stored, and fields stored in their _pack form.
_PLAIN_FIELDS = ("method", "priority", "dont_filter", "encoding")
_PACKED_FIELDS = ("meta", "cb_kwargs", "cookies", "flags")
_V1_FIELDS = frozenset(_PLAIN_FIELDS + _PACKED_FIELDS + ("headers",))
_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class UnencodableRequestError(ValueError):
    """A request that cannot be stored in the shared frontier."""


class UndecodableRequestError(ValueError):
    """A stored payload that is not a request this worker can rebuild; ``reason``: the rule (a stats dimension)."""

    def __init__(self, message: str, reason: str = "format") -> None:
        super().__init__(message)
        self.reason = reason


def _pack(value: Any, path: str) -> Any:
    t = type(value)
    if t in _SCALARS:
        if t is float and not math.isfinite(value):
            raise UnencodableRequestError(f"{path} is {value!r}, which JSON cannot carry")
        return value
    # Strings, ints, bools and None inside a container are taken as they are: no call, no path built.
    if t is list:
        return [v if type(v) in _PLAIN else _pack(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if t is dict:
        if all(type(k) is str and not k.startswith("$") for k in value):
            return {k: v if type(v) in _PLAIN else _pack(v, f"{path}[{k!r}]") for k, v in value.items()}
        return {"$d": [[_pack(k, f"{path} key"), _pack(v, f"{path}[{k!r}]")] for k, v in value.items()]}
    if t is tuple:
        return {"$t": [_pack(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if t is bytes:
        return {"$b": base64.b64encode(value).decode("ascii")}
    raise UnencodableRequestError(f"{path} holds a {t.__module__}.{t.__qualname__} ({value!r:.80}), "
                             "which the frontier cannot store (JSON values, bytes, tuples only)")


def _unpack(value: Any) -> Any:
    t = type(value)
    if t is list:
        return [_unpack(v) for v in value]
    if t is dict:
        if len(value) == 1:
            if "$b" in value:
                return base64.b64decode(value["$b"])
            if "$t" in value:
                return tuple(_unpack(v) for v in value["$t"])
            if "$d" in value:
                return {_unpack(k): _unpack(v) for k, v in value["$d"]}
        return {k: _unpack(v) for k, v in value.items()}
    return value


_DEFAULT_GATE = GateConfig()


def _method_name(spider: Spider | None, func: Any, field: str, gate: GateConfig) -> str | None:
    if func is None:
        return None
    if isinstance(func, str):
        return _allowed(spider, func, field, gate)
    # A bound method of the spider, found by name (Request.to_dict scans every
    # member of the spider with inspect.getmembers, far too slow per request).
    name = getattr(func, "__name__", None)
    owner = getattr(func, "__self__", None)
    if spider is not None and owner is spider and name:
        bound = getattr(spider, name, None)
        if getattr(bound, "__func__", None) is getattr(func, "__func__", object()):
            return _allowed(spider, str(name), field, gate)
    raise UnencodableRequestError(f"{field} {func!r} is not a method of the spider {spider!r}; "
                             "the frontier stores callbacks by name")


def _allowed(spider: Spider | None, name: str, field: str, gate: GateConfig) -> str:
    if spider is not None:
        try:
            check_callback(type(spider), name, gate.callback_allow, field)
        except GateError as exc:
            raise UnencodableRequestError(f"{exc}: a worker would refuse it when read back "
                                          "(FRONTIER_CALLBACK_ALLOW lists exceptions)") from None
    return name


def encode_request(request: Request, spider: Spider | None, gate: GateConfig = _DEFAULT_GATE) -> bytes:
    """``request`` as JSON bytes; raises :class:`UnencodableRequestError`."""
    body = request.body
    try:
        body_text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        body_text = None
    d: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "url": request.url,
        "method": request.method,
        "headers": [[k.decode("latin-1"), [v.decode("latin-1") for v in vs]] for k, vs in request.headers.items()],
        "body": body_text if body_text is not None else "",
        "meta": _pack(request.meta, "meta"),
        "cb_kwargs": _pack(request.cb_kwargs, "cb_kwargs"),
        "cookies": _pack(request.cookies, "cookies"),
        "priority": request.priority,
        "dont_filter": request.dont_filter,
        "flags": _pack(request.flags, "flags"),
        "encoding": request.encoding,
        "callback": _method_name(spider, request.callback, "callback", gate),
        "errback": _method_name(spider, request.errback, "errback", gate),
    }
    d = {k: v for k, v in d.items() if k not in _DEFAULTS or v != _DEFAULTS[k] or type(v) is not type(_DEFAULTS[k])}
    if body_text is None:
        d["body_b64"] = base64.b64encode(body).decode("ascii")
    if type(request) is not Request:
        cls = type(request)
        d["class"] = f"{cls.__module__}.{cls.__qualname__}"
        extra = [a for a in cls.attributes if a not in Request.attributes]
        for attr in extra:
            d.setdefault("extra", {})[attr] = _pack(getattr(request, attr), attr)
    return _encoder.encode(d).encode("utf-8")


def _request_class(path: str) -> type[Request]:
    module, _, name = path.rpartition(".")
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    if not (isinstance(cls, type) and issubclass(cls, Request)):
        raise UndecodableRequestError(f"request class {path!r} is not an imported scrapy.Request subclass")
    return cls


def _request_kwargs(d: dict[str, Any]) -> dict[str, Any]:
    """Request's arguments from a payload: only the fields it has (for a plain Request, a field left out
    takes its default: the same request as with every default passed, and faster on the hot path)."""
    kwargs: dict[str, Any] = {"url": check_url(d["url"])}
    if "body_b64" in d:
        kwargs["body"] = base64.b64decode(d["body_b64"])
    elif "body" in d:
        kwargs["body"] = d["body"].encode("utf-8")
    if "headers" in d:
        kwargs["headers"] = [(k.encode("latin-1"), [v.encode("latin-1") for v in vs]) for k, vs in d["headers"]]
    for name in _PLAIN_FIELDS:
        if name in d:
            kwargs[name] = d[name]
    for name in _PACKED_FIELDS:
        if name in d:
            kwargs[name] = _unpack(d[name])
    if "extra" in d:
        kwargs.update({k: _unpack(v) for k, v in d["extra"].items()})
    return kwargs


def decode_request(data: bytes | str, spider: Spider | None, gate: GateConfig = _DEFAULT_GATE) -> Request:
    """Rebuild a request from :func:`encode_request` output; raises :class:`UndecodableRequestError`.

    The error's ``reason`` is the gate rule that refused it (``size``, ``scheme``,
    ``callback``) or ``format``.
    """
    if len(data) > gate.max_entry_bytes:
        raise UndecodableRequestError(f"entry of {len(data)} bytes is over FRONTIER_MAX_ENTRY_BYTES "
                                      f"({gate.max_entry_bytes})", "size")
    try:
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("v") not in _READABLE_VERSIONS:
            raise UndecodableRequestError(f"not a version {FORMAT_VERSION} request payload")
        cls = _request_class(d["class"]) if "class" in d else Request
        if d["v"] != FORMAT_VERSION and not (d.keys() >= _V1_FIELDS and ("body" in d or "body_b64" in d)):
            raise KeyError(sorted(_V1_FIELDS - d.keys()))  # version 1 stored every field
        if cls is not Request:
            # A subclass may have defaults of its own: pass Request's explicitly, as they were left out.
            d = {**_DEFAULTS, **d}
        kwargs = _request_kwargs(d)
        for field in ("callback", "errback"):
            name = d.get(field)
            if name is not None:
                if spider is None:
                    raise UndecodableRequestError(f"{field} {name!r} needs a spider", "callback")
                kwargs[field] = getattr(spider, check_callback(type(spider), name, gate.callback_allow, field))
        return cls(**kwargs)
    except UndecodableRequestError:
        raise
    except GateError as exc:
        raise UndecodableRequestError(str(exc), exc.reason) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UndecodableRequestError(f"bad request payload: {exc!r}") from exc
