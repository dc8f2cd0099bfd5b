"""The run lease: one run writes an output at a time, and a retried run takes over from a dead one.

``<out>/_staging/lease.json`` holds the run id, the holder's identity (host, pid, the process's start
time, the boot id and pid namespace, so a reused pid is not mistaken for the holder) and a heartbeat
renewed by a background thread. Acquiring:

- the lease is created with an exclusive create (local disk: ``os.link`` of a complete temp file; S3:
  ``PutObject`` with ``If-None-Match: *``; other fsspec filesystems: ``open(mode="xb")`` where supported);
- a lease whose holder is provably dead (same host, boot and pid namespace, and that process is gone) is
  taken over at once; otherwise the rerun waits (``wait_s``, bounded) for the lease to go stale (not
  renewed for ``stale_after_s``, or its heartbeat already that old) and takes over, saying so; it fails
  (``LeaseHeld``, exit 3) only while the lease keeps being renewed;
- takeover and every renewal are compare-and-swap: local disk under ``flock`` on the staging folder, S3
  with ``If-Match: <etag>``; a filesystem with neither gets read-compare-write (a small race window).

Every heartbeat checks that the lease is still this run's. When it is not (another run took over after
this one stalled) or it could not be renewed for ``stale_after_s``, the lease is lost: the Store's write
guard then refuses every write and delete, and the runner stops between units (``LeaseLost``, exit 3).
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psutil

from pipelines.errors import SynthgenError
from pipelines.io.store import Store, _is_s3

LEASE_KEY = "_staging/lease.json"


class LeaseHeld(SynthgenError):
    """Another live run holds the output."""

    exit_code = 3


class LeaseLost(SynthgenError):
    """This run no longer holds the output (taken over, or not renewable): it must stop writing."""

    exit_code = 3


def identity() -> dict[str, Any]:
    """Who holds a lease: enough to tell, on the same machine, whether that process still runs."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        boot = f"{psutil.boot_time():.0f}"
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time(),
            "boot": boot, "pidns": pidns}


def holder_gone(held: dict[str, Any]) -> str | None:
    """Why the holder is certainly dead, or None when this machine cannot tell (another host or
    container: then only staleness says so)."""
    me = identity()
    if held.get("host") != me["host"] or held.get("pidns") != me["pidns"]:
        return None
    if held.get("boot") != me["boot"]:
        return "this host has rebooted since"
    pid = held.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        proc = psutil.Process(pid)
        started, status = proc.create_time(), proc.status()
    except psutil.NoSuchProcess:
        return f"its process {pid} on this host has exited"
    except psutil.AccessDenied:
        return None
    if not isinstance(held.get("started"), (int, float)) or abs(started - held["started"]) > 1e-3:
        return f"its process {pid} on this host has exited (the pid now belongs to another process)"
    if status == psutil.STATUS_ZOMBIE:
        return f"its process {pid} on this host has exited"
    return None


class _Cas:
    """Read / exclusive create / compare-and-swap / delete of one small object. Tokens: the bytes
    (local disk, generic) or the ETag (S3)."""

    def __init__(self, store: Store, key: str):
        self.store, self.key, self.path = store, key, store.path(key)
        self.kind = "local" if store.is_local else "s3" if _is_s3(store.url) else "generic"

    def _locked(self, fn: Callable[[], Any]) -> Any:
        import fcntl

        folder = posixpath.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fn()
        finally:
            os.close(fd)  # releases the lock

    def read(self) -> tuple[bytes, str | bytes] | None:
        fs = self.store.fs

        def go() -> tuple[bytes, str | bytes] | None:
            fs.invalidate_cache()
            try:
                if self.kind == "s3":
                    etag = fs.info(self.path)["ETag"]  # before the content: a newer content fails the CAS
                    return fs.cat_file(self.path), etag
                data = fs.cat_file(self.path)
                return data, data
            except FileNotFoundError:
                return None

        if self.kind == "local":  # under the lock: never a file half-written by the O_EXCL fallback
            return self.store._retry(lambda: self._locked(go), self.key)
        return self.store._retry(go, self.key)

    def _mine(self, data: bytes) -> str | bytes | None:
        """After an ambiguous failure (a retried request whose first attempt landed): the token if the
        object holds exactly ``data`` (unique: run id and sequence number), else None."""
        got = self.read()
        return got[1] if got is not None and got[0] == data else None

    def create(self, data: bytes) -> str | bytes | None:
        """Token of the new object, or None if it exists."""
        def local() -> bytes | None:
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
                return data
            except FileExistsError:
                return None
            except OSError as e:  # no hard links here (some FUSE / network mounts): O_EXCL, under the lock
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return None
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                return data
            finally:
                os.unlink(tmp)

        def remote() -> str | bytes | None:
            try:
                if self.kind == "s3":
                    out = self.store.fs.pipe_file(self.path, data, mode="create")
                    return out["ETag"] if isinstance(out, dict) and "ETag" in out else self._mine(data)
                try:
                    with self.store.fs.open(self.path, "xb") as f:
                        f.write(data)
                except (ValueError, NotImplementedError):  # no exclusive mode here: check, then write
                    if self.store.fs.exists(self.path):
                        return None
                    self.store.fs.pipe_file(self.path, data)
                return data
            except FileExistsError:
                return self._mine(data)

        if self.kind == "local":
            return self.store._retry(lambda: self._locked(local), self.key)
        return self.store._retry(remote, self.key)

    def replace(self, token: str | bytes, data: bytes) -> str | bytes | None:
        """Write ``data`` only if the object is still ``token``: the new token, or None if it is not."""
        def local() -> bytes | None:
            try:
                with open(self.path, "rb") as f:
                    if f.read() != token:
                        return None
            except FileNotFoundError:
                return None
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return data

        def s3() -> str | None:
            try:
                out = self.store.fs.pipe_file(self.path, data, IfMatch=token)
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno != errno.EINVAL or "Precondition" not in repr(e.__cause__ or e):
                    raise
                mine = self._mine(data)
                return mine if isinstance(mine, str) else None
            return out["ETag"] if isinstance(out, dict) and "ETag" in out else self._mine(data)

        if self.kind == "local":
            return self.store._retry(lambda: self._locked(local), self.key)
        if self.kind == "s3":
            return self.store._retry(s3, self.key)
        got = self.read()  # generic: read-compare-write, not atomic
        if got is None or got[1] != token:
            return None
        self.store._retry(lambda: self.store.fs.pipe_file(self.path, data), self.key)
        return data

    def delete(self, token: str | bytes) -> None:
        """Delete the object if it is still ``token``."""
        def local() -> None:
            try:
                with open(self.path, "rb") as f:
                    if f.read() == token:
                        os.unlink(self.path)
            except FileNotFoundError:
                pass

        if self.kind == "local":
            self.store._retry(lambda: self._locked(local), self.key)
            return
        got = self.read()
        if got is not None and got[1] == token:
            self.store._retry(lambda: self.store.fs.rm(self.path), self.key)


def _print(event: str, **fields: Any) -> None:
    print(f"[synthgen] {event}: " + ", ".join(f"{k}={v}" for k, v in fields.items()), file=sys.stderr)


class Lease:
    """``with Lease(store, ...):`` holds ``<out>/_staging/lease.json`` for the block (see the module doc)."""

    def __init__(self, store: Store, *, heartbeat_s: float = 10.0, stale_after_s: float = 60.0,
                 wait_s: float | None = None, log: Callable[..., None] = _print):
        self.store, self.heartbeat_s, self.stale_after_s = store, heartbeat_s, stale_after_s
        self.wait_s = 1.5 * stale_after_s if wait_s is None else wait_s
        self.log = log
        self.run_id = uuid.uuid4().hex[:12]
        self.lost: str | None = None
        self._cas = _Cas(store, LEASE_KEY)
        self._seq = 0
        self._token: str | bytes | None = None
        self._renewed = 0.0
        self._me = identity()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        self._seq += 1
        return json.dumps({"run_id": self.run_id, **self._me, "seq": self._seq, "heartbeat": time.time()}).encode()

    def current(self) -> dict[str, Any] | None:
        got = self._cas.read()
        return _parse(got[0]) if got else None

    def acquire(self) -> "Lease":
        start = time.monotonic()
        seen: tuple[str | bytes | None, float] = (None, start)
        waiting = False
        poll = max(0.02, min(1.0, self.stale_after_s / 10))
        while True:
            body = self._body()
            token = self._cas.create(body)
            if token is not None:
                return self._hold(token)
            got = self._cas.read()
            if got is None:
                continue  # released in between: create again
            data, token = got
            now = time.monotonic()
            if token != seen[0]:
                seen = (token, now)
            held = _parse(data)
            why = self._takeover_reason(held, now - seen[1])
            if why:
                new = self._cas.replace(token, body)
                if new is not None:
                    self.log("lease_taken_over", url=self.store.url, previous_run=(held or {}).get("run_id"), why=why)
                    return self._hold(new)
                continue
            waited = now - start
            if waited >= self.wait_s:
                raise LeaseHeld(
                    f"{self.store.url}: another run is writing this output (run {held.get('run_id')} on "
                    f"{held.get('host')}, pid {held.get('pid')}); its lease was renewed throughout a {waited:.0f}s "
                    f"wait (a lease not renewed for {self.stale_after_s:g}s is taken over; output.lease_wait_s "
                    f"sets the wait)")
            if not waiting:
                waiting = True
                self.log("lease_wait", url=self.store.url, holder=held.get("run_id"), host=held.get("host"),
                         pid=held.get("pid"), wait_s=self.wait_s,
                         why=f"its holder runs, or runs where this machine cannot see it; taken over if "
                             f"not renewed for {self.stale_after_s:g}s")
            time.sleep(min(poll, max(0.0, self.wait_s - waited)))

    def _takeover_reason(self, held: dict[str, Any] | None, unchanged_s: float) -> str | None:
        if held is None:
            return "the lease file is unreadable"
        if held.get("run_id") == self.run_id:
            return "it is this run's own"
        gone = holder_gone(held)
        if gone:
            return f"its holder is dead: {gone}"
        hb = held.get("heartbeat")
        if isinstance(hb, (int, float)) and time.time() - hb >= self.stale_after_s:
            return f"stale: last heartbeat {time.time() - hb:.0f}s ago"
        if unchanged_s >= self.stale_after_s:
            return f"stale: not renewed for {unchanged_s:.0f}s"
        return None

    def _hold(self, token: str | bytes) -> "Lease":
        self._token, self._renewed = token, time.monotonic()
        self.store.guard = self.check
        self._thread = threading.Thread(target=self._beat, name="synthgen-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        """Renew by compare-and-swap; losing the lease (or failing to renew it for ``stale_after_s``)
        stops the run."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                new = self._cas.replace(self._token, self._body())
            except Exception as e:  # noqa: BLE001 - storage trouble: retried until the lease would look stale
                if time.monotonic() - self._renewed >= self.stale_after_s:
                    self.lost = (f"{self.store.url}: the lease could not be renewed for {self.stale_after_s:g}s "
                                 f"({type(e).__name__}: {e}); another run may have taken over")
                    return
                continue
            if new is None:
                try:
                    held = self.current() or {}
                except Exception:  # noqa: BLE001 - who holds it now is only for the message
                    held = {}
                self.lost = (f"{self.store.url}: this run (run {self.run_id}) lost its lease to run "
                             f"{held.get('run_id')} on {held.get('host')}, pid {held.get('pid')}; stopping so "
                             f"that only one run writes this output")
                return
            self._token, self._renewed = new, time.monotonic()

    def check(self) -> None:
        """Raise ``LeaseLost`` once this run no longer holds the lease."""
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.heartbeat_s + 30)
        if self.store.guard == self.check:
            self.store.guard = None
        if self._token is not None and not self.lost:
            self._cas.delete(self._token)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        held = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return held if isinstance(held, dict) else None
