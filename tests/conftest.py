"""Shared fixtures: offline env, the tiny models (built once), one Ray cluster per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Set before the session's Ray cluster starts, so its workers inherit them (S3 tests use moto).
os.environ["AWS_ACCESS_KEY_ID"] = "testing-key-id"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing-secret-from-env"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    from tests.tinymodels import build_all

    return build_all(ROOT / ".cache" / "tiny")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local 2-CPU cluster for the whole session, as on the CI machine."""
    import ray

    from pipelines.execution.runner import ensure_ray

    ensure_ray(num_cpus=2, quiet=True)  # the same cluster settings as `synthgen run`
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on a free loopback port for the session."""
    from .s3env import start_moto

    proc, url = start_moto()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def job_dict(models: Path, out: str, **over: Any) -> dict[str, Any]:
    """A small job on the tiny models; ``over`` replaces top-level sections (merged one level)."""
    spec: dict[str, Any] = {
        "name": "t",
        "manifest": {"template": {"template": "a {colour} {shape}",
                                  "slots": {"colour": ["red", "blue"], "shape": ["circle", "square"]},
                                  "seeds": [7], "num_images": 6}},
        "generator": {"model": str(models / "diffusion"), "steps": 4, "guidance_scale": 3.0,
                      "height": 32, "width": 32, "batch_size": 4},
        "clip": {"model": "tiny-clip", "pretrained": str(models / "clip" / "tiny-clip.safetensors"),
                 "model_config_file": str(models / "clip" / "tiny-clip.json"),
                 "tokenizer": str(models / "clip" / "tokenizer")},
        "unit_size": 8,
        "resources": {"generate": {"size": 2, "num_cpus": 0.5, "torch_threads": 1},
                      "embed": {"size": 1, "num_cpus": 0.25, "torch_threads": 1}},
        "output": {"url": out, "shard_max_samples": 10},
    }
    for k, v in over.items():
        merge = isinstance(v, dict) and isinstance(spec.get(k), dict) and k != "manifest"
        spec[k] = {**spec[k], **v} if merge else v
    return spec


def write_job(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def resolve_job_clip(spec: dict[str, Any]) -> dict[str, Any]:
    """A shipped job's toy-CLIP paths (relative to jobs/) made absolute, for a copy written elsewhere."""
    for k in ("pretrained", "model_config_file", "tokenizer"):
        spec["clip"][k] = str((ROOT / "jobs" / spec["clip"][k]).resolve())
    return spec
