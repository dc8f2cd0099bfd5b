import time

import pytest

from pipelines.errors import StorageError
from pipelines.io.lease import LEASE_KEY, Lease, LeaseHeld
from pipelines.io.retry import retry_call
from pipelines.io.store import Store


def test_live_lease_refuses_a_second_run_and_a_stale_one_is_taken_over(tmp_path):
    store = Store(str(tmp_path))
    first = Lease(store, heartbeat_s=0.1, stale_after_s=0.6).acquire()
    time.sleep(0.8)  # heartbeats keep it live past stale_after_s
    with pytest.raises(LeaseHeld, match="another run is writing this output"):
        Lease(store, stale_after_s=0.6).acquire()
    first._stop.set()  # the first run dies: no more heartbeats
    first._thread.join()
    time.sleep(0.7)
    second = Lease(store, stale_after_s=0.6).acquire()
    assert second.current()["run_id"] == second.run_id
    second.release()
    assert not store.exists(LEASE_KEY)


def test_retry_recovers_from_transient_errors_with_backoff():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"

    assert retry_call(flaky, what="s3://b/k", attempts=5, base_delay=1.0, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2 and sleeps[0] <= 1.0 and sleeps[1] <= 2.0


def test_retry_gives_up_with_a_clear_error_and_never_retries_permanent_ones():
    sleeps = []
    with pytest.raises(StorageError, match=r"s3://b/k: storage failed after 4 attempts: TimeoutError"):
        retry_call(lambda: (_ for _ in ()).throw(TimeoutError("slow")), what="s3://b/k", attempts=4,
                   sleep=sleeps.append)
    assert len(sleeps) == 3
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("k")

    with pytest.raises(FileNotFoundError):
        retry_call(missing, what="x", sleep=sleeps.append)
    assert len(calls) == 1


def test_keys_cannot_escape_the_dataset_root(tmp_path):
    store = Store(str(tmp_path))
    for bad in ("../x", "a/../../b", "/abs", "a\x00b", "a/./b"):
        with pytest.raises(ValueError, match="unsafe path component"):
            store.path(bad)
