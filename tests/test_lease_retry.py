"""The run lease with real processes (killed, stopped, stale), on local disk and moto's S3; retries that
retry only transient storage errors, within one budget."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from pipelines.errors import StorageError
from pipelines.io.lease import LEASE_KEY, Lease, LeaseHeld, LeaseLost, identity
from pipelines.io.retry import retry_call
from pipelines.io.store import Store

from .conftest import ROOT
from .s3env import Faults, make_bucket, start_proxy, storage_options

# A driver stand-in: holds the lease, then writes through the Store until a write refuses.
HOLDER = r"""
import json, sys, time
from pipelines.io.lease import Lease
from pipelines.io.store import Store
url, opts, hb, stale = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
store = Store(url, opts, retry_base_delay=0.01)
lease = Lease(store, heartbeat_s=hb, stale_after_s=stale, wait_s=0).acquire()
print("held", lease.run_id, flush=True)
n = 0
try:
    while True:
        store.write_bytes("_staging/holder-writes", str(n).encode())
        n += 1
        time.sleep(0.02)
except Exception as e:
    print(type(e).__name__, e, flush=True)
    sys.exit(getattr(e, "exit_code", 1))
"""


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path) -> tuple[str, dict[str, Any]]:
    if request.param == "local":
        return str(tmp_path / "out"), {}
    endpoint = request.getfixturevalue("s3")
    bucket = f"lease-{os.urandom(4).hex()}"
    make_bucket(endpoint, bucket)
    return f"s3://{bucket}/out", storage_options(endpoint)


def _holder(url: str, opts: dict[str, Any], hb: float, stale: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, json.dumps(opts), str(hb), str(stale)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline()
    assert line.startswith("held"), line + proc.stdout.read()
    return proc, line.split()[1]


class Events(list):
    def __call__(self, event: str, **fields: Any) -> None:
        self.append((event, fields))


def test_a_killed_holder_on_this_host_is_taken_over_at_once(where):
    url, opts = where
    proc, old = _holder(url, opts, hb=0.2, stale=60)
    proc.send_signal(signal.SIGKILL)  # a preempted driver: no release, the lease stays behind
    proc.wait()
    store = Store(url, opts)
    assert json.loads(store.read_bytes(LEASE_KEY))["run_id"] == old
    events = Events()
    t = time.monotonic()
    lease = Lease(store, stale_after_s=60, wait_s=30, log=events).acquire()  # before: LeaseHeld, exit 3
    assert time.monotonic() - t < 20, "took over without waiting for the 60 s staleness"
    assert lease.current()["run_id"] == lease.run_id
    (event, fields), = events
    assert event == "lease_taken_over" and fields["previous_run"] == old
    assert f"its process {proc.pid} on this host has exited" in fields["why"]
    lease.release()
    assert not store.exists(LEASE_KEY)


def test_a_renewed_lease_is_waited_for_within_the_bound_then_refused(where):
    url, opts = where
    proc, old = _holder(url, opts, hb=0.1, stale=1.0)
    try:
        events = Events()
        t = time.monotonic()
        with pytest.raises(LeaseHeld, match=rf"run {old} .*renewed throughout a \d+s wait"):
            Lease(Store(url, opts), stale_after_s=1.0, wait_s=3, log=events).acquire()
        assert 2.9 < time.monotonic() - t < 20
        assert [e for e, _ in events] == ["lease_wait"]
    finally:
        proc.kill()
        proc.wait()


def test_a_lease_of_another_host_is_taken_over_once_stale(where):
    url, opts = where
    store = Store(url, opts)
    other = {"run_id": "elsewhere", "host": "another-host", "pid": 1, "started": 0.0, "boot": "x", "pidns": None,
             "seq": 1}
    # that host's clock runs an hour ahead, so only watching the lease tells that nobody renews it
    store.write_bytes(LEASE_KEY, json.dumps({**other, "heartbeat": time.time() + 3600}).encode())
    events = Events()
    t = time.monotonic()
    lease = Lease(store, stale_after_s=1.0, wait_s=10, log=events).acquire()
    assert 0.9 < time.monotonic() - t < 20
    assert [e for e, _ in events] == ["lease_wait", "lease_taken_over"]
    assert "stale: not renewed for 1s" in events[1][1]["why"]
    lease.release()
    # a heartbeat already older than stale_after_s: taken over at once, also from another host
    store.write_bytes(LEASE_KEY, json.dumps({**other, "heartbeat": time.time() - 100}).encode())
    events.clear()
    t = time.monotonic()
    Lease(store, stale_after_s=30, wait_s=60, log=events).acquire().release()
    assert time.monotonic() - t < 15 and "last heartbeat 100s ago" in events[-1][1]["why"]


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path):
    store = Store(str(tmp_path))
    me = identity()  # this live process, but started at another time: the holder's pid was reused
    store.write_bytes(LEASE_KEY, json.dumps({**me, "run_id": "old", "started": me["started"] - 50,
                                             "heartbeat": time.time()}).encode())
    events = Events()
    Lease(store, stale_after_s=60, wait_s=0, log=events).acquire().release()
    assert "the pid now belongs to another process" in events[0][1]["why"]
    # the same process, really alive: not dead, so a bounded wait and a refusal
    live = Lease(store, heartbeat_s=0.1, stale_after_s=60).acquire()
    with pytest.raises(LeaseHeld):
        Lease(store, stale_after_s=60, wait_s=0.3).acquire()
    live.release()


def test_a_run_that_lost_its_lease_stops_writing(where):
    url, opts = where
    proc, old = _holder(url, opts, hb=0.2, stale=1.0)
    try:
        os.kill(proc.pid, signal.SIGSTOP)  # a stalled driver (a long pause, a partition): its heartbeats stop
        store = Store(url, opts)
        new = Lease(store, heartbeat_s=0.2, stale_after_s=1.0, wait_s=10, log=Events()).acquire()
        os.kill(proc.pid, signal.SIGCONT)  # the old driver wakes up and would go on writing
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 3, out
        assert out.startswith("LeaseLost") and f"lost its lease to run {new.run_id}" in out, out
        last = store.read_bytes("_staging/holder-writes")
        time.sleep(0.5)
        assert store.read_bytes("_staging/holder-writes") == last  # nothing written after it stopped
        assert new.current()["run_id"] == new.run_id and new.lost is None
        new.release()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_writes_refuse_once_the_lease_is_lost(tmp_path):
    store = Store(str(tmp_path))
    lease = Lease(store, heartbeat_s=0.05, stale_after_s=60).acquire()
    store.write_bytes("_staging/a", b"1")
    store.write_bytes(LEASE_KEY, b'{"run_id": "intruder"}')  # another run's lease replaced this one's
    time.sleep(0.3)
    assert lease.lost and "lost its lease to run intruder" in lease.lost
    for op in (lambda: store.write_bytes("_staging/a", b"2"), lambda: store.delete("_staging/a"),
               lambda: store.delete_prefix("_staging")):
        with pytest.raises(LeaseLost):
            op()
    assert store.read_bytes("_staging/a") == b"1"
    lease.release()  # a lost lease is not deleted: it is the other run's
    assert json.loads(store.read_bytes(LEASE_KEY))["run_id"] == "intruder"


# ------------------------------------------------------------------------------------------ retries
def test_retry_recovers_from_transient_errors_with_backoff():
    from botocore.exceptions import ClientError, EndpointConnectionError

    slowdown = ClientError({"Error": {"Code": "SlowDown", "Message": "reduce"},
                            "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
    s3fs_503 = OSError(errno.EBUSY, "Please reduce your request rate.")  # how s3fs re-raises a 503
    s3fs_503.__cause__ = slowdown
    for err in (ConnectionResetError("reset"), TimeoutError("slow"), slowdown, s3fs_503,
                EndpointConnectionError(endpoint_url="http://x"), OSError(errno.EREMOTEIO, "500")):
        calls, sleeps = [], []

        def flaky():
            calls.append(1)
            if len(calls) < 3:
                raise err
            return "ok"

        assert retry_call(flaky, what="s3://b/k", attempts=5, base_delay=1.0, sleep=sleeps.append) == "ok", err
        assert len(calls) == 3 and len(sleeps) == 2 and sleeps[0] <= 1.0 and sleeps[1] <= 2.0


def test_programming_and_permanent_errors_propagate_at_once():
    from botocore.exceptions import ClientError

    denied = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Get")
    for err in (TypeError("bad call"), KeyError("k"), ValueError("v"), AttributeError("a"), FileNotFoundError("k"),
                PermissionError("no"), denied, OSError(errno.EINVAL, "precondition failed"), RuntimeError("bug")):
        calls, sleeps = [], []

        def broken():
            calls.append(1)
            raise err

        with pytest.raises(type(err)):
            retry_call(broken, what="x", attempts=6, sleep=sleeps.append)
        assert len(calls) == 1 and sleeps == [], err


def test_retry_gives_up_with_a_clear_error():
    sleeps = []
    with pytest.raises(StorageError, match=r"s3://b/k: storage failed after 4 attempts: TimeoutError"):
        retry_call(lambda: (_ for _ in ()).throw(TimeoutError("slow")), what="s3://b/k", attempts=4,
                   sleep=sleeps.append)
    assert len(sleeps) == 3


def test_one_retry_budget_on_real_s3(s3):
    """A prefix that keeps answering 503 SlowDown: ``retries`` requests reach the server, not
    retries x s3fs's 5 x botocore's attempts."""
    make_bucket(s3, "budget")
    faults = Faults(down_prefix="/down/")
    server, proxy = start_proxy(s3, faults)
    try:
        for extra in ({}, {"config_kwargs": {"retries": {"max_attempts": 10, "mode": "adaptive"}}}):  # infra/'s
            faults.counts["down"] = 0
            store = Store("s3://budget/ds", storage_options(proxy, **extra), retries=3, retry_base_delay=0.01)
            with pytest.raises(StorageError, match=r"s3://budget/ds/down/x: storage failed after 3 attempts"):
                store.write_bytes("down/x", b"1")
            assert faults.counts["down"] == 3, extra
        with pytest.raises(TypeError):  # a bug in the call is not retried at all
            store.write_bytes("up/x", 123)  # type: ignore[arg-type]
        assert faults.counts["down"] == 3 and faults.counts["ok"] == 0
    finally:
        server.shutdown()


def test_keys_cannot_escape_the_dataset_root(tmp_path):
    store = Store(str(tmp_path))
    for bad in ("../x", "a/../../b", "/abs", "a\x00b", "a/./b"):
        with pytest.raises(ValueError, match="unsafe path component"):
            store.path(bad)
