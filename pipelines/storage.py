"""fsspec helpers: one way to reach local disk, S3 and the rest, with whole-object writes.

Object stores make a single PUT atomic; local disk gets the same guarantee from write-to-temp then
rename. Nothing here logs credentials: ``storage_options`` never leave this module in messages.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


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

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url
        self.fs, self.root = url_to_fs(url, storage_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, key: str) -> str:
        return join(self.root, key)

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one whole object: readers see the old object or the new one, never a part."""
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
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        out = [posixpath.relpath(f, self.root) for f in found]
        return sorted(k for k in out if ".tmp-" not in k)

    def delete_prefix(self, prefix: str) -> None:
        base = self.path(prefix)
        if self.fs.exists(base):
            self.fs.rm(base, recursive=True)
