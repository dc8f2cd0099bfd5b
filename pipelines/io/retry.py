"""Retries with exponential backoff and full jitter for transient storage errors.

Object stores throw 500/503/SlowDown and drop connections; botocore and s3fs retry some of that
below us, and this layer makes every whole-object operation retry the rest within one budget.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from pipelines.errors import StorageError

T = TypeVar("T")

#: Errors that retrying cannot fix (the object is absent, access is denied, the call is wrong).
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError,
             StorageError)


def retry_call(fn: Callable[[], T], *, what: str, attempts: int = 6, base_delay: float = 0.2,
               max_delay: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn`` until it succeeds or ``attempts`` are spent; then raise ``StorageError`` naming ``what``."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except PERMANENT:
            raise
        except Exception as e:  # transient by elimination: network, 5xx, throttling, timeouts
            if attempt == attempts:
                raise StorageError(f"{what}: storage failed after {attempts} attempts: "
                                   f"{type(e).__name__}: {e}") from e
            sleep(random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1))))
    raise AssertionError("unreachable")
