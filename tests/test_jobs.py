"""The shipped job specs load, and the demo uses only models committed in the repo (a fresh clone
can run it offline without building anything random)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import load_job

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "jobs").glob("*.yaml")))
def test_job_spec_loads(name: str) -> None:
    spec = load_job(ROOT / "jobs" / name)
    assert spec.name


def test_demo_uses_the_committed_toy_models() -> None:
    spec = load_job(ROOT / "jobs" / "demo.yaml")
    assets = ROOT / "pipelines" / "toyworld" / "assets"
    model = Path(spec.generator.model).resolve()
    assert model == assets / "diffusion" and (model / "model_index.json").is_file()
    assert Path(spec.clip.pretrained).resolve().is_relative_to(assets / "clip")
    assert spec.curation.min_clip_score is not None  # meaningful only with a trained generator
