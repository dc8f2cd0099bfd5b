"""A lease object that keeps two runs from writing the same output at once.

``<out>/_staging/lease.json`` holds the run id and a heartbeat refreshed by a background thread;
a lease whose heartbeat is older than ``stale_after_s`` belongs to a dead run and is taken over.
Best effort (object stores have no compare-and-swap through fsspec): schedulers should also keep
runs from overlapping (the RayCronJob in infra/ bounds each run with ``activeDeadlineSeconds``
shorter than its schedule).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from pipelines.errors import SynthgenError
from pipelines.io.store import Store

LEASE_KEY = "_staging/lease.json"


class LeaseHeld(SynthgenError):
    exit_code = 3


class Lease:
    def __init__(self, store: Store, *, heartbeat_s: float = 10.0, stale_after_s: float = 60.0):
        self.store, self.heartbeat_s, self.stale_after_s = store, heartbeat_s, stale_after_s
        self.run_id = uuid.uuid4().hex[:12]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "heartbeat": time.time()}).encode()

    def current(self) -> dict[str, Any] | None:
        if not self.store.exists(LEASE_KEY):
            return None
        try:
            return json.loads(self.store.read_bytes(LEASE_KEY))
        except (json.JSONDecodeError, FileNotFoundError):
            return None

    def acquire(self) -> "Lease":
        held = self.current()
        if held and held.get("run_id") != self.run_id and time.time() - held.get("heartbeat", 0) < self.stale_after_s:
            raise LeaseHeld(
                f"{self.store.url}: another run is writing this output (run {held.get('run_id')} on "
                f"{held.get('host')}, heartbeat {time.time() - held['heartbeat']:.0f}s ago); a lease older "
                f"than {self.stale_after_s:.0f}s is taken over"
            )
        self.store.write_bytes(LEASE_KEY, self._body())
        self._thread = threading.Thread(target=self._beat, name="synthgen-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.store.write_bytes(LEASE_KEY, self._body())
            except Exception:  # a missed heartbeat is not fatal; staleness takes minutes
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        held = self.current()
        if held and held.get("run_id") == self.run_id:
            self.store.delete(LEASE_KEY)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
