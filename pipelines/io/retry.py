"""Retries with exponential backoff and full jitter, for transient storage errors only.

Object stores answer 500/503/SlowDown/throttling, time out and drop connections; that is worth
retrying. Anything else (a missing object, a denied request, a precondition that failed, and above
all a programming error such as ``TypeError`` or ``KeyError``) propagates at once.

One budget: :class:`~pipelines.io.store.Store` turns botocore's and s3fs's own retries off for the
filesystems it creates (one attempt per call each), so a whole-object operation makes at most
``attempts`` requests (``output.retries``, default 6) instead of retries multiplied over three layers.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from typing import TypeVar

from pipelines.errors import StorageError

T = TypeVar("T")

#: errno values of an OSError that a later attempt can fix. s3fs maps HTTP 503/SlowDown/409 to EBUSY
#: and 500 to EREMOTEIO; an unknown S3 error code becomes EIO.
TRANSIENT_ERRNOS = frozenset({errno.EBUSY, errno.EREMOTEIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                              errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE, errno.ENETUNREACH,
                              errno.EHOSTUNREACH, errno.ENETDOWN, errno.EIO})
#: S3 error codes that mean "try again" (throttling and server-side trouble).
TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                             "TooManyRequestsException", "RequestTimeout",
                             "InternalError", "ServiceUnavailable", "OperationAborted"})


def _transient_classes() -> tuple[type[BaseException], ...]:
    """Network-level exception classes of the storage stack that is installed (none is required)."""
    out: list[type[BaseException]] = [TimeoutError, ConnectionError]
    try:
        from botocore import exceptions as be
        from botocore.parsers import ResponseParserError  # throttling replies can carry invalid XML

        out += [be.HTTPClientError, be.ConnectionError, be.ResponseStreamingError, ResponseParserError]
    except ImportError:
        pass
    try:
        import aiohttp

        out += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ServerTimeoutError]
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        out.append(FSTimeoutError)
    except ImportError:
        pass
    return tuple(out)


_TRANSIENT: tuple[type[BaseException], ...] | None = None


def is_transient(exc: BaseException) -> bool:
    """True for connection errors, timeouts, 5xx/SlowDown/throttling and OSErrors of a transient errno,
    looking through the chain of causes (s3fs re-raises botocore's ClientError as an OSError)."""
    global _TRANSIENT
    if _TRANSIENT is None:
        _TRANSIENT = _transient_classes()
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, StorageError):
            return False
        if isinstance(e, _TRANSIENT):
            return True
        response = getattr(e, "response", None)  # botocore ClientError
        if isinstance(response, dict):
            err = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if err.get("Code") in TRANSIENT_CODES or (isinstance(status, int) and (status >= 500 or status == 429)):
                return True
            return False
        if isinstance(e, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                          NotADirectoryError)):
            return False
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return True
        e = e.__cause__ or e.__context__
    return False


def retry_call(fn: Callable[[], T], *, what: str, attempts: int = 6, base_delay: float = 0.2,
               max_delay: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn`` until it succeeds or ``attempts`` are spent, retrying only :func:`is_transient` errors;
    past the budget raise ``StorageError`` naming ``what``. Every other error propagates unchanged."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == attempts:
                raise StorageError(f"{what}: storage failed after {attempts} attempts: "
                                   f"{type(e).__name__}: {e}") from e
            sleep(random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1))))
    raise AssertionError("unreachable")
