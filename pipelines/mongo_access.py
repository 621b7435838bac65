"""Fail fast on what waiting cannot fix: MongoDB refusing the credentials of ``MONGO_URI``.

An outage is worth waiting for (the writer journals and retries); wrong
credentials or missing privileges are not: retrying them ends in a crawl that
reports ``finished`` with its items left in a local journal. So the writer
asks MongoDB once at start-up for something only an authorised user gets
(``listCollections`` on its database). An authentication or authorization
error stops the worker there, with one line naming ``MONGO_URI`` (redacted);
an unreachable server does not (the journal covers it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pymongo.errors import OperationFailure, PyMongoError

from crawler.redact import redact_uri
from crawler.startup import StartupError

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient

logger = logging.getLogger(__name__)

# MongoDB error codes: UserNotFound, Unauthorized, AuthenticationFailed, and
# Atlas's AtlasError for a bad password.
AUTH_ERROR_CODES = frozenset({11, 13, 18, 8000})


class MongoAuthError(StartupError):
    """MongoDB refused the credentials or the privileges of ``MONGO_URI``."""


def is_auth_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationFailure) and exc.code in AUTH_ERROR_CODES


async def check_access(client: AsyncMongoClient[Any], database: str, uri: str) -> None:
    """Raise :class:`MongoAuthError` when MongoDB refuses ``uri``'s credentials for ``database``."""
    try:
        await client[database].command("listCollections", nameOnly=True, authorizedCollections=True)
    except OperationFailure as exc:
        if not is_auth_error(exc):
            return
        raise MongoAuthError(
            f"MONGO_URI {redact_uri(uri)}: MongoDB refused access to database {database!r} "
            f"({exc.details.get('codeName') if exc.details else exc.code}: "
            f"{(exc.details or {}).get('errmsg', exc)}); check the user, password and authSource in MONGO_URI"
        ) from None
    except PyMongoError as exc:
        # Unreachable now: the writer's journal and retries are for that.
        logger.debug("MongoDB access not checked at start-up: %(exc)s", {"exc": redact_uri(str(exc))})
