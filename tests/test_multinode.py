"""A real two-node Ray cluster (``ray.cluster_utils.Cluster``: a head and a worker node, each its own
raylet and object store), output on moto's S3 (no shared disk between nodes), the procedural backend
so it is quick. A job submitted with ``ray job submit`` completes; a run whose worker node is killed
mid-run completes too, verifies, and is byte-identical to the undisturbed one; a local output path
on more than one node is refused before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .s3env import free_port, make_bucket, storage_options

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLIP = ROOT / "pipelines" / "toyworld" / "assets" / "clip"
# Files that hold run times or worker names; everything else must match byte for byte.
VOLATILE = ("provenance.json", "index.json", "timings.parquet", "README.md", "report.html", "report.json")

pytestmark = pytest.mark.timeout(900)


def _spec(out: str, s3: str, num_images: int) -> dict[str, Any]:
    spec = yaml.safe_load((ROOT / "jobs" / "scale.yaml").read_text())
    spec["manifest"]["template"]["num_images"] = num_images
    spec["clip"].update(pretrained=str(CLIP / "toy-clip.safetensors"), model_config_file=str(CLIP / "toy-clip.json"),
                        tokenizer=str(CLIP / "tokenizer"))
    spec["unit_size"] = 16
    spec["resources"] = {"generate": {"size": 2, "num_cpus": 0.5}, "embed": {"size": 1, "num_cpus": 0.5},
                         "actor_start_timeout_s": 240}
    spec["output"] = {"url": out, "shard_max_samples": 100}
    if out.startswith("s3://"):
        spec["output"]["storage_options"] = storage_options(s3)
    return spec


@pytest.fixture(scope="module")
def cluster():
    """Head (with the dashboard's job server) + one worker node, 2 logical CPUs each: one-CPU nodes
    hang Ray Data actor pools on this 2-core machine (ENVIRONMENT-NOTES)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster

    dash = free_port()
    # Every node's dashboard agent needs its own port: the default (52365) may belong to another cluster.
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True,
                                                      "dashboard_host": "127.0.0.1", "dashboard_port": dash,
                                                      "dashboard_agent_listen_port": free_port(),
                                                      # a lost node is declared dead after ~3 s, not ~30 s
                                                      "_system_config": {"health_check_period_ms": 1000,
                                                                         "health_check_failure_threshold": 3}})
    c.add_node(num_cpus=2, dashboard_agent_listen_port=free_port())
    c.wait_for_nodes()
    yield c, f"http://127.0.0.1:{dash}"
    c.shutdown()


def _env(c: Any) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": c.address, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled"}


def _write_job(tmp: Path, spec: dict[str, Any]) -> Path:
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _files(fs: Any, root: str) -> dict[str, bytes]:
    """Every file but the volatile ones; shards without their C2PA manifest stores, whose SDK salts
    each signature at random (README "Byte identity of signed datasets")."""
    from pipelines.publish.c2pa import canonical_shard

    keys = [p[len(root) + 1:] for p in fs.find(root)]
    return {k: canonical_shard(k, fs.cat_file(f"{root}/{k}")) for k in keys if not set(k.split("/")) & set(VOLATILE)}


def test_local_output_on_a_multinode_cluster_is_refused(cluster, tmp_path):
    c, _ = cluster
    out = tmp_path / "ds"
    job = _write_job(tmp_path, _spec(str(out), "", 2))
    r = subprocess.run([str(BIN / "synthgen"), "run", str(job), "-q"], env=_env(c), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "field 'output.url'" in r.stderr and "2 nodes" in r.stderr and "s3://" in r.stderr
    assert not out.exists()  # refused before the lease or any staging was written


def _submit(dashboard: str, c: Any, job: Path) -> subprocess.CompletedProcess:
    """``ray job submit`` to the head: the entrypoint runs on the cluster, joins it and publishes."""
    for _ in range(15):  # the head's dashboard agent takes a few seconds to come up after the raylet
        sub = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", dashboard, "--", str(BIN / "synthgen"),
                              "run", str(job), "-q"], env={**_env(c), "RAY_ADDRESS": dashboard},
                             capture_output=True, text=True, timeout=1200)
        if "No available agent" not in sub.stderr:
            return sub
        time.sleep(2)
    return sub


def _verify(s3: str, url: str) -> None:
    ok = subprocess.run([str(BIN / "synthgen"), "verify", url, "--storage-options", json.dumps(storage_options(s3))],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr


def test_ray_job_submit_publishes_to_s3(cluster, s3, tmp_path):
    """The cluster path end to end, small: one job through the head's job server, on both nodes."""
    c, dashboard = cluster
    make_bucket(s3, "submit")
    sub = _submit(dashboard, c, _write_job(tmp_path, _spec("s3://submit/ds", s3, 2)))  # 40 samples, 3 units
    assert sub.returncode == 0 and "succeeded" in sub.stdout, (sub.stdout[-3000:], sub.stderr[-2000:])
    _verify(s3, "s3://submit/ds")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_node_loss_mid_run_gives_the_same_dataset(cluster, s3, tmp_path):
    """Slow (two full runs on the cluster): ``pytest -m slow tests/test_multinode.py``."""
    import s3fs

    c, dashboard = cluster
    make_bucket(s3, "multi")
    fs = s3fs.S3FileSystem(endpoint_url=s3, skip_instance_cache=True, use_listings_cache=False)  # polled below
    sub = _submit(dashboard, c, _write_job(tmp_path, _spec("s3://multi/calm", s3, 12)))  # 240 samples, 15 units
    assert sub.returncode == 0 and "succeeded" in sub.stdout, (sub.stdout[-3000:], sub.stderr[-2000:])
    _verify(s3, "s3://multi/calm")

    # The same job to another prefix, killing the worker node once units are being staged.
    disturbed = _spec("s3://multi/hurt", s3, 12)
    job = tmp_path / "hurt.yaml"
    job.write_text(yaml.safe_dump(disturbed))
    proc = subprocess.Popen([str(BIN / "synthgen"), "run", str(job), "-q", "--log-format", "json"], env=_env(c),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = next(iter(c.worker_nodes))
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if len(fs.glob("multi/hurt/_staging/*/units/*.parquet")) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the node could be removed"
    c.remove_node(worker, allow_graceful=False)  # raylet, object store and its workers: a node failure
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-4000:]
    summary = next(json.loads(line) for line in out.splitlines() if line.startswith('{"event": "summary"'))
    assert summary["planned"] == 240 and summary["units_generated"] + summary["units_reused"] == 15
    _verify(s3, "s3://multi/hurt")
    a, b = _files(fs, "multi/calm"), _files(fs, "multi/hurt")
    assert a.keys() == b.keys() and any(k.startswith("shards/") for k in a)
    assert [k for k in a if a[k] != b[k]] == []
