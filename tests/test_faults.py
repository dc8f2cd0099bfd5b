"""Faults lose nothing and duplicate nothing: a killed generator actor, a killed driver, a sample
whose generation raises. Each ends with ``verify`` passing and every sample present exactly once."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipelines.config import JobSpec
from pipelines.execution.runner import run
from pipelines.publish.c2pa import canonical_shard
from pipelines.publish.verify import verify

from .conftest import job_dict, write_job


def _keys(out: Path) -> list[str]:
    tars = sorted(glob.glob(str(out / "shards" / "*.tar")))
    return [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False)]


def _slow_job(models: Path, out: Path, **over) -> dict:
    """8 units of 8 samples, slow enough (many steps) that a kill lands mid-run."""
    return job_dict(models, str(out), manifest={"template": {
        "template": "a {colour} {shape}", "slots": {"colour": ["red", "blue", "green", "white"],
                                                   "shape": ["circle", "square"]},
        "seeds": [1], "num_images": 8}}, generator={"steps": 40}, **over)


def _generator_pids() -> list[int]:
    """PIDs of Ray Data's generator actor processes (Ray sets their process titles)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"GenerateActor" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _staged(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("_staging/*/units/*.parquet"))


def test_killed_generator_actor_is_restarted_and_its_unit_redone(tiny_models, ray_cluster, tmp_path):
    out = tmp_path / "ds"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not _staged(out):
            time.sleep(0.05)
        pids = _generator_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    t = threading.Thread(target=killer)
    t.start()
    res = run(JobSpec.model_validate(_slow_job(tiny_models, out, output={"keep_staging": False})), quiet=True)
    t.join()
    assert killed, "no generator actor was found to kill"
    assert res.counts["kept"] == 64
    assert verify(str(out))[0] == []
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 64
    workers = set(pq.read_table(out / "timings.parquet").column("gen_worker").to_pylist())
    assert len(workers) >= 2


def test_killed_driver_resumes_without_regenerating_staged_units(tiny_models, ray_cluster, tmp_path):
    out = tmp_path / "ds"
    spec = _slow_job(tiny_models, out, output={"lease_stale_after_s": 2.0})
    job = write_job(tmp_path / "job.yaml", spec)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(job), "--quiet"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(_staged(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    proc.wait()
    time.sleep(2.1)  # in-flight stage tasks of the dead cluster settle; its lease goes stale
    staged = _staged(out)
    assert 2 <= len(staged) < 8, "the kill must land mid-run"
    assert not (out / "index.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in staged}
    res = run(JobSpec.model_validate({**spec, "output": {**spec["output"], "keep_staging": True}}), quiet=True)
    assert res.units_reused == len(staged) and res.units_generated == 8 - len(staged)
    for p in staged:  # staged units were read, never rewritten
        assert p.stat().st_mtime_ns == mtimes[p.name]
    assert verify(str(out))[0] == []
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 64
    ref = tmp_path / "ref"
    run(JobSpec.model_validate({**spec, "output": {**spec["output"], "url": str(ref)}}), quiet=True)
    for f in sorted((ref / "shards").iterdir()):  # identical but for C2PA salts and signatures
        assert canonical_shard(f.name, (out / "shards" / f.name).read_bytes()) == canonical_shard(
            f.name, f.read_bytes()), f.name


def test_a_failing_sample_is_recorded_and_the_rest_completes(tiny_models, ray_cluster, tmp_path):
    import pyarrow as pa
    from PIL import Image
    from typer.testing import CliRunner

    from pipelines.cli import app

    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(good)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt_id": ["txt", "i2i", "broken"], "prompt": ["a red circle"] * 3,
                             "seed": [1, 2, 3], "num_images": [2, 2, 1],
                             "init_image": [None, str(good), str(bad)]}), m)
    out = tmp_path / "ds"
    spec = job_dict(tiny_models, str(out), manifest={"path": str(m)})
    res = CliRunner().invoke(app, ["run", str(write_job(tmp_path / "job.yaml", spec)), "--quiet"])
    assert res.exit_code == 4, res.output  # failures above the (default zero) tolerance
    assert "1 samples failed" in res.output
    dec = {r["sample_id"]: r for r in pq.read_table(out / "decisions.parquet").to_pylist()}
    assert not dec["broken_00000"]["kept"]
    assert dec["broken_00000"]["reasons"][0].startswith("generation_failed: ")
    assert sorted(_keys(out)) == ["i2i_00000", "i2i_00001", "txt_00000", "txt_00001"]
    assert verify(str(out))[0] == []
    index = json.loads((out / "index.json").read_text())
    assert index["counts"]["failed"] == 1
    # the input was fixed (a transient failure): a rerun of the same job regenerates only the unit with the
    # failed sample (staging was kept for it) and republishes without the hole, no --overwrite needed
    Image.new("RGB", (32, 32), (30, 30, 200)).save(bad, format="PNG")
    res = CliRunner().invoke(app, ["run", str(write_job(tmp_path / "job.yaml", spec)), "--quiet"])
    assert res.exit_code == 0, res.output
    assert sorted(_keys(out)) == ["broken_00000", "i2i_00000", "i2i_00001", "txt_00000", "txt_00001"]
    assert json.loads((out / "index.json").read_text())["counts"]["failed"] == 0
    assert not (out / "_staging").exists()
    spec["max_failed_fraction"] = 0.5
    res = CliRunner().invoke(app, ["run", str(write_job(tmp_path / "job.yaml", spec)), "--quiet", "--overwrite"])
    assert res.exit_code == 0, res.output


def test_an_actor_pool_that_cannot_fit_fails_clearly_instead_of_hanging(tiny_models, ray_cluster, tmp_path):
    from pipelines.errors import SynthgenError

    spec = job_dict(tiny_models, str(tmp_path / "ds"), resources={
        "generate": {"size": 2, "num_cpus": 1.5, "torch_threads": 1},  # 3 CPUs on a 2-CPU cluster
        "embed": {"size": 1, "num_cpus": 0.25, "torch_threads": 1}, "actor_start_timeout_s": 5,
        "autoscaler": True})  # as if one could add nodes: Ray waits, then fails (without one it fails at once)
    t0 = time.time()
    with pytest.raises(SynthgenError, match=r"actor pools did not start within 5 s.*generate: 2 x 1.5 CPU"):
        run(JobSpec.model_validate(spec), quiet=True)
    assert time.time() - t0 < 120
    assert not (tmp_path / "ds" / "index.json").exists()
