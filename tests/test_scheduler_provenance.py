"""Provenance pins the sampler, not just the weights: two runs of the same weights under different
scheduler settings draw different images, so their records must differ too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pipelines.config import GeneratorSpec
from pipelines.contracts.record import build_record
from pipelines.contracts.schemas import SAMPLE_RECORD, validator
from pipelines.generate.backends.diffusion import DiffusionBackend
from pipelines.plan.samples import Sample
from pipelines.publish.provenance import component_config_sha256


def test_config_digest_covers_class_and_settings_not_bookkeeping() -> None:
    base = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    digest = component_config_sha256
    assert digest(base | {"_diffusers_version": "0.1", "_use_default_values": ["x"]}) == digest(base)
    assert digest(base | {"algorithm_type": "sde-dpmsolver++"}) != digest(base)
    assert digest(base | {"_class_name": "A"}) != digest(base | {"_class_name": "B"})


def test_scheduler_swap_changes_the_recorded_config_digest_not_the_weights(tiny_models: Path) -> None:
    model = str(tiny_models / "diffusion")
    stock = DiffusionBackend(GeneratorSpec(model=model))
    swapped = DiffusionBackend(GeneratorSpec(model=model, scheduler="EulerAncestralDiscreteScheduler"))
    assert stock.info["weights_sha256"] == swapped.info["weights_sha256"]
    assert stock.info["scheduler_config_sha256"] != swapped.info["scheduler_config_sha256"]
    assert stock.info["scheduler_config_sha256"] == component_config_sha256(stock.pipe.scheduler.config)
    sample = Sample("s_00000", "s", 0, "a red circle", None, 3, 2, 3.0, 32, 32, {}, None, None)
    (a,), (b,) = stock.generate([sample]), swapped.generate([sample])
    assert not np.array_equal(a, b)  # the digest tracks something that changes the pixels

    row = {"sample_id": "s_00000", "prompt_id": "s", "index": 0, "prompt": "a red circle",
           "negative_prompt": None, "seed": 3, "attributes": {}, "steps": 2, "guidance_scale": 3.0,
           "height": 32, "width": 32, "clip_score": 1.0, "pixel_sha256": "0" * 64}
    clip = {"model": "toy-clip", "weights_sha256": None}
    job = {"name": "t", "fingerprint": "f"}
    record = build_record(row, stock.info, clip, job, "u0", {"file": "x.parquet", "row": 0}, {"kept": True})
    assert record["generator"]["scheduler_config_sha256"] == stock.info["scheduler_config_sha256"]
    validator(SAMPLE_RECORD).validate(record)


def test_staging_key_follows_the_model_folders_config_files(tiny_models: Path, tmp_path: Path) -> None:
    """A sampler setting lives in scheduler_config.json, not in a weight file: editing it must
    change the staging fingerprint, or a resumed job would mix images from two samplers."""
    from pipelines.config import load_job
    from pipelines.execution.runner import fingerprint
    from pipelines.publish.provenance import weights_sha256

    from .conftest import job_dict, write_job

    model = tmp_path / "diffusion"
    shutil.copytree(tiny_models / "diffusion", model)
    spec = load_job(write_job(tmp_path / "job.yaml", job_dict(tiny_models, str(tmp_path / "out"),
                                                              generator={"model": str(model)})))
    before, weights = fingerprint(spec, "m"), weights_sha256(str(model))
    assert fingerprint(spec, "m") == before  # stable
    cfg_path = model / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["timestep_spacing"] = "trailing" if cfg.get("timestep_spacing") != "trailing" else "leading"
    cfg_path.write_text(json.dumps(cfg))
    assert weights_sha256(str(model)) == weights
    assert fingerprint(spec, "m") != before
