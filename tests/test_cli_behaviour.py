"""What a new user sees from the CLI (issue 15): validation that resolves every model before Ray starts,
a pool the cluster can never host failing in seconds, quiet meaning quiet, clean stage progress, and no
path of the machine that ran the job in anything published. Runs the real CLI on the tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

from .conftest import ROOT, job_dict, write_job


def _small_job(tmp_path: Path, models: Path, **over: Any) -> dict[str, Any]:
    """2 prompts x 1 image in one unit, one actor per pool; model paths as a user writes them: relative to
    the job file (``models`` is a link beside it)."""
    link = tmp_path / "models"
    if not link.exists():
        link.symlink_to(models, target_is_directory=True)
    spec = job_dict(models, "out", **over)
    spec["manifest"] = {"template": {"template": "a {colour} circle", "slots": {"colour": ["red", "blue"]},
                                     "seeds": [3], "num_images": 1}}
    spec["generator"].update(model="models/diffusion", steps=2)
    spec["clip"].update(pretrained="models/clip/tiny-clip.safetensors", tokenizer="models/clip/tokenizer",
                        model_config_file="./models/clip/tiny-clip.json")
    spec["unit_size"] = 4
    spec["resources"] = {"generate": {"size": 1, "num_cpus": 0.5}, "embed": {"size": 1, "num_cpus": 0.25},
                         **over.get("resources", {})}
    return spec


def _cli(tmp_path: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.parametrize("section, values, key", [
    ("generator", {"model": "./no_such_model"}, "generator.model"),
    ("generator", {"model": "no-such-org/no-such-model"}, "generator.model"),  # a hub id, not cached, offline
    ("generator", {"model": "models/clip"}, "generator.model"),  # a folder, but no model_index.json
    ("clip", {"model": "ViT-B-33"}, "clip.model"),  # not an open_clip name
    ("clip", {"pretrained": "models/clip/missing.safetensors"}, "clip.pretrained"),
])
def test_validate_resolves_every_model_and_names_the_key(section, values, key, tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _small_job(tmp_path, tiny_models)
    spec[section].update(values)
    job = write_job(tmp_path / "job.yaml", spec)
    for cmd in ("validate", "run"):
        res = CliRunner().invoke(app, [cmd, str(job)])
        assert res.exit_code == 2, res.output
        assert f"{job}: field '{key}'" in res.output, res.output
        assert repr(next(iter(values.values()))) in res.output  # the value as the spec wrote it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "models"]  # nothing written, Ray not needed


def test_validate_accepts_the_tiny_models(tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path / "job.yaml", _small_job(tmp_path, tiny_models))
    res = CliRunner().invoke(app, ["validate", str(job)])
    assert res.exit_code == 0 and res.output.startswith("ok:"), res.output


def test_a_pool_no_node_can_host_fails_in_seconds_naming_the_resource(tmp_path, tiny_models, ray_cluster,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the local cluster: no autoscaler
    spec = _small_job(tmp_path, tiny_models, resources={"generate": {"size": 1, "num_cpus": 0.5, "num_gpus": 1},
                                                        "actor_start_timeout_s": 120})
    job = write_job(tmp_path / "job.yaml", spec)
    res = CliRunner().invoke(app, ["validate", str(job)])  # the local cluster a run would start here
    assert res.exit_code == 2 and "resources.generate.num_gpus=1 but the cluster has 0 GPU" in res.output, res.output
    t0 = time.monotonic()
    res = CliRunner().invoke(app, ["run", str(job)])
    assert res.exit_code == 2, res.output
    assert "resources.generate.num_gpus=1 but the cluster has 0 GPU and no autoscaler" in res.output
    assert time.monotonic() - t0 < 60  # not the 120 s actor start timeout
    assert not (tmp_path / "out").exists()  # failed before anything was written
    # more actors than the cluster's CPUs, with nothing to add nodes: the same, for the pools' sum
    spec["resources"]["generate"] = {"size": 9, "num_cpus": 0.5}
    res = CliRunner().invoke(app, ["run", str(write_job(tmp_path / "job.yaml", spec))])
    assert res.exit_code == 2 and "the actor pools claim 4.75 CPU" in res.output, res.output


def _published_bytes(out: Path) -> dict[str, bytes]:
    return {str(f.relative_to(out)): f.read_bytes() for f in out.rglob("*") if f.is_file()}


def test_quiet_prints_only_the_summary_and_nothing_published_names_this_machine(tmp_path, tiny_models):
    write_job(tmp_path / "job.yaml", _small_job(tmp_path, tiny_models))
    res = _cli(tmp_path, "run", "job.yaml", "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # no Ray INFO/WARNING lines, no core_worker line, no progress bars
    assert res.stdout.startswith("dataset: out ") and "2 planned" in res.stdout, res.stdout

    out = tmp_path / "out"
    files = _published_bytes(out)
    assert {"README.md", "provenance.json", "report.json", "index.json"} <= set(files)
    for machine_path in {str(tmp_path), str(tiny_models), str(tiny_models.resolve()), str(ROOT)}:
        leaks = [name for name, data in files.items() if machine_path.encode() in data]
        assert not leaks, f"{machine_path} appears in {leaks}"
    card = files["README.md"].decode()
    from pipelines.publish.provenance import weights_sha256

    assert f"`models/diffusion` (StableDiffusionPipeline" in card
    assert weights_sha256(str(tiny_models / "diffusion")) in card
    assert b'"model": "models/diffusion"' in files["report.json"] or b'"models/diffusion"' in files["report.json"]


def test_default_output_is_clean_stage_progress(tmp_path, tiny_models):
    write_job(tmp_path / "job.yaml", _small_job(tmp_path, tiny_models))
    res = _cli(tmp_path, "run", "job.yaml")
    assert res.returncode == 0, res.stderr
    err = res.stderr
    for line in ("[synthgen] planned:", "generate: 100%", "[synthgen] curated: kept=", "[synthgen] publishing:",
                 "[synthgen] published:"):
        assert line in err, err
    for noise in (" INFO ", " WARNING ", "core_worker", "(MapWorker", "Loading weights", "Running Dataset"):
        assert noise not in err, err
    assert "samples: 2 planned" in res.stdout
