"""Credentials out of everything the project prints or logs: the one redaction helper.

``redis://:secret@host`` and ``mongodb://user:secret@h1,h2/db`` become
``redis://***@host`` and ``mongodb://***@h1,h2/db``; a ``password=`` (or
``secret=``, ``token=``) query parameter keeps its name and loses its value.
Used for URLs (``REDIS_URL``, ``MONGO_URI``, ``BYTE_BUDGET_REDIS_URL``) and for
any text that may quote one (exception messages, command lines).
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s]*@")
_QUERY_SECRET = re.compile(r"(?i)(?P<name>[?&](?:password|passwd|pwd|secret|token)=)[^&#\s]*")


def redact_uri(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _QUERY_SECRET.sub(r"\g<name>***", text)
