"""Real S3 protocol (moto server on loopback): a whole job, storage faults, credentials kept out."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from pipelines.config import JobSpec
from pipelines.errors import StorageError
from pipelines.execution.runner import run
from pipelines.publish.verify import verify

from .conftest import job_dict
from .s3env import Faults, make_bucket, start_proxy, storage_options

SECRET = "s3cr3t-value-that-must-not-leak"


def _keys(fs: s3fs.S3FileSystem, root: str) -> list[str]:
    keys = []
    for path in sorted(fs.glob(f"{root}/shards/*.tar")):
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(path))) as tf:
            keys += sorted({m.name.split(".", 1)[0] for m in tf.getmembers()})
    return keys


def test_job_reads_manifest_from_and_publishes_to_s3(s3, tiny_models, ray_cluster):
    make_bucket(s3, "synth")
    fs = s3fs.S3FileSystem(endpoint_url=s3, skip_instance_cache=True)
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt_id": ["a", "b", "c"], "prompt": ["a red circle", "a blue square", "x"],
                             "seed": [1, 2, 3], "num_images": [3, 3, 3]}), buf)
    fs.pipe_file("synth/manifests/m.parquet", buf.getvalue())
    opts = storage_options(s3, key="testing-key-id", secret=SECRET)
    spec = JobSpec.model_validate(job_dict(tiny_models, "s3://synth/ds", manifest={"path": "s3://synth/manifests/m.parquet"},
                                           output={"url": "s3://synth/ds", "storage_options": opts}))
    res = run(spec, quiet=True)
    assert res.counts["kept"] == 9
    problems, index = verify("s3://synth/ds", storage_options(s3))
    assert problems == []
    assert _keys(fs, "synth/ds") == sorted(f"{p}_{i:05d}" for p in "abc" for i in range(3))
    assert not fs.exists("synth/ds/_staging")
    for key in fs.find("synth/ds"):
        assert SECRET.encode() not in fs.cat_file(key), key
    prov = json.loads(fs.cat_file("synth/ds/provenance.json"))
    assert prov["job_spec"]["output"]["storage_options"]["endpoint_url"] == s3
    assert "secret" not in prov["job_spec"]["output"]["storage_options"]


def test_flaky_storage_is_retried_to_a_complete_dataset(s3, tiny_models, ray_cluster):
    make_bucket(s3, "flaky")
    faults = Faults(rate=0.2, seed=3)
    server, proxy = start_proxy(s3, faults)
    try:
        spec = JobSpec.model_validate(job_dict(tiny_models, "s3://flaky/ds", output={
            "url": "s3://flaky/ds", "storage_options": storage_options(proxy), "retry_base_delay_s": 0.05}))
        res = run(spec, quiet=True)
    finally:
        server.shutdown()
    assert faults.counts["503"] + faults.counts["drop"] + faults.counts["stall"] >= 5, faults.counts
    assert res.counts["kept"] == 24
    problems, _ = verify("s3://flaky/ds", storage_options(s3))
    assert problems == []
    fs = s3fs.S3FileSystem(endpoint_url=s3, skip_instance_cache=True)
    keys = _keys(fs, "flaky/ds")
    assert len(keys) == len(set(keys)) == 24


def test_storage_down_during_publish_fails_clearly_and_leaves_no_index(s3, tiny_models, ray_cluster):
    make_bucket(s3, "down")
    faults = Faults(down_prefix="/shards/")
    server, proxy = start_proxy(s3, faults)
    opts = storage_options(proxy, config_kwargs={"retries": {"max_attempts": 2, "mode": "standard"}})
    spec = JobSpec.model_validate(job_dict(tiny_models, "s3://down/ds", output={
        "url": "s3://down/ds", "storage_options": opts, "retries": 3, "retry_base_delay_s": 0.05}))
    try:
        with pytest.raises(StorageError, match=r"s3://down/ds/shards/t-000000\.tar: storage failed after 3 attempts"):
            run(spec, quiet=True)
        fs = s3fs.S3FileSystem(endpoint_url=s3, skip_instance_cache=True)
        assert not fs.exists("down/ds/index.json")
        assert verify("s3://down/ds", storage_options(s3))[0]  # absent, not half-valid
        # Storage back: the rerun publishes from the staged units without generating any.
        faults.down_prefix = None
        res = run(spec, quiet=True)
    finally:
        server.shutdown()
    assert res.units_generated == 0 and res.units_reused == 3 and res.counts["kept"] == 24
    assert verify("s3://down/ds", storage_options(s3))[0] == []
