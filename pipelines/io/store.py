"""fsspec helpers: one way to reach local disk, S3 and the rest, with whole-object writes.

Object stores make a single PUT atomic; local disk gets the same guarantee from write-to-temp then
rename. Nothing here logs credentials: ``storage_options`` never leave this module in messages.
Retries: one budget (``retries`` attempts per operation, :mod:`pipelines.io.retry`); the S3 filesystems a
Store creates make one attempt per call in botocore and in s3fs, so the layers do not multiply.
A Store can carry a write guard (the run lease): once it says the run lost its output, every write and
delete through the Store refuses.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipelines.io.retry import retry_call

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def _is_s3(url: str) -> bool:
    return url.split("://", 1)[0] in ("s3", "s3a")


def _one_budget(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options with botocore's own retries off for S3 (one attempt per request; a configured retry
    ``mode`` such as ``adaptive`` keeps its client-side rate limiting); s3fs's retry loop is set to one
    attempt on the instance (:meth:`Store.__init__`). A ``max_attempts`` in ``storage_options`` still
    applies to what reads S3 outside a Store (streamed manifest and reference reads)."""
    opts = dict(storage_options or {})
    if _is_s3(url):
        opts["skip_instance_cache"] = True  # the s3fs setting below must not leak to other users of the options
        cfg = dict(opts.get("config_kwargs") or {})
        retries = {k: v for k, v in (cfg.get("retries") or {}).items() if k not in ("max_attempts",)}
        cfg["retries"] = {"mode": "standard", **retries, "total_max_attempts": 1}
        opts["config_kwargs"] = cfg
    return opts


def display_url(url: str, fs: fsspec.AbstractFileSystem, path: str, root: str) -> str:
    """The user's URL form of ``path`` (for error messages), without credentials."""
    if path == root:
        return url
    return url.rstrip("/") + "/" + posixpath.relpath(path, root)


def check_key(part: str) -> str:
    """Reject path components that could escape the dataset root (traversal, absolute, control chars)."""
    if not _SAFE_KEY.match(part) or part in (".", ".."):
        raise ValueError(f"unsafe path component: {part!r}")
    return part


def join(root: str, *parts: str) -> str:
    for p in parts:
        for seg in p.split("/"):
            check_key(seg)
    return posixpath.join(root.rstrip("/"), *parts)


class Store:
    """A dataset root on some filesystem; all paths below it are relative keys."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *, retries: int = 6,
                 retry_base_delay: float = 0.2):
        self.url = url
        self.fs, self.root = url_to_fs(url, _one_budget(url, storage_options))
        if _is_s3(url):
            self.fs.retries = 1  # s3fs's own loop, on this Store's own instance (skip_instance_cache)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.retries, self.retry_base_delay = retries, retry_base_delay
        self.guard: Any = None  # callable raising when writes must stop (the lease); never pickled

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "guard": None}  # workers get no guard: the driver checks it between units

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if _is_s3(self.url):
            self.fs.retries = 1  # an unpickled s3fs instance starts from the class default

    def check_writable(self) -> None:
        """Raise (the guard's error, e.g. LeaseLost) if this run may no longer write here."""
        if self.guard is not None:
            self.guard()

    def _retry(self, fn: Any, key: str) -> Any:
        return retry_call(fn, what=f"{self.url.rstrip('/')}/{key}", attempts=self.retries,
                          base_delay=self.retry_base_delay)

    def path(self, key: str) -> str:
        return join(self.root, key)

    def exists(self, key: str) -> bool:
        def go() -> bool:
            self.fs.invalidate_cache()  # other processes write here; listings must be fresh
            return self.fs.exists(self.path(key))

        return self._retry(go, key)

    def read_bytes(self, key: str) -> bytes:
        return self._retry(lambda: self.fs.cat_file(self.path(key)), key)

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one whole object: readers see the old object or the new one, never a part."""
        self.check_writable()
        self._retry(lambda: self._write(key, data), key)

    def _write(self, key: str, data: bytes) -> None:
        dest = self.path(key)
        if self.is_local:
            os.makedirs(posixpath.dirname(dest), exist_ok=True)
            tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        else:
            self.fs.pipe_file(dest, data)

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (relative to the root), sorted; [] if absent."""
        base = self.path(prefix)

        def go() -> list[str]:
            self.fs.invalidate_cache()
            try:
                return self.fs.find(base)
            except FileNotFoundError:
                return []

        found = self._retry(go, prefix)
        out = [posixpath.relpath(f, self.root) for f in found]
        return sorted(k for k in out if ".tmp-" not in k)

    def delete(self, key: str) -> None:
        self.check_writable()

        def go() -> None:
            try:
                self.fs.rm(self.path(key))
            except FileNotFoundError:
                pass

        self._retry(go, key)

    def delete_prefix(self, prefix: str) -> None:
        self.check_writable()
        keys = self.list(prefix)
        if keys:
            self._retry(lambda: self.fs.rm([self.path(k) for k in keys]), prefix)
        if self.is_local and os.path.isdir(self.path(prefix)):
            import shutil

            shutil.rmtree(self.path(prefix), ignore_errors=True)
