"""The generator returns raw pixels only; CPU stages decode inputs and encode PNGs; faults are
classified (a sample's input, out of memory, a lost device, anything else); padding never changes
an image; a rerun fills samples recorded as failed. Real tiny diffusion model throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.config import GeneratorSpec, JobSpec
from pipelines.contracts.unit import GEN_SCHEMA, PIXEL_SCHEMA, meta, pixels_from_bytes
from pipelines.generate.backends.diffusion import DiffusionBackend
from pipelines.generate.encode import encode_png, encode_unit, pixel_sha256
from pipelines.generate.faults import DeviceLostError
from pipelines.generate.inputs import fetch_inputs, read_inputs
from pipelines.generate.unit import generate_unit
from pipelines.plan.samples import Sample

from .conftest import job_dict


def _s(i: int, init: str | None = None, prompt: str = "a red circle") -> Sample:
    return Sample(f"p_{i:05d}", "p", i, prompt, None, 100 + i, 2, 3.0, 32, 32, {"k": "v"}, init)


@pytest.fixture(scope="module")
def backend(tiny_models: Path) -> DiffusionBackend:
    torch.set_num_threads(1)
    return DiffusionBackend(GeneratorSpec(model=str(tiny_models / "diffusion"), steps=2, height=32, width=32))


def _pixels(table: pa.Table) -> dict[str, np.ndarray | None]:
    return {r["sample_id"]: None if r["pixels"] is None else pixels_from_bytes(r["pixels"], r["pixels_shape"])
            for r in table.to_pylist()}


def test_generator_returns_pixels_and_the_cpu_stage_encodes_them_as_before(backend) -> None:
    samples = [_s(i) for i in range(3)]
    px = generate_unit(backend, samples, 2)
    assert px.schema.names == PIXEL_SCHEMA.names and "png" not in px.column_names
    out = encode_unit(px)
    assert out.schema.names == GEN_SCHEMA.names
    assert meta(out, "synthgen.generator") == backend.info
    direct = backend.generate(samples[:2]) + backend.generate(samples[2:])  # the old in-actor path
    for img, row in zip(direct, out.to_pylist()):
        text = {"prompt": row["prompt"], "seed": str(row["seed"]), "model": backend.info["model"],
                "sample_id": row["sample_id"]}
        assert row["png"] == encode_png(img, text) and row["pixel_sha256"] == pixel_sha256(img)


def test_padding_never_changes_an_image(backend) -> None:
    samples = [_s(i, prompt=p) for i, p in enumerate(["a red circle", "a blue square", "a green circle",
                                                      "a white square"])]
    full = _pixels(generate_unit(backend, samples, 4))
    alone = _pixels(generate_unit(backend, samples[:1], 4, pad=True))  # padded 1 -> 4
    pair = _pixels(generate_unit(backend, samples[2:], 4, pad=True))  # padded 2 -> 4
    assert np.array_equal(alone["p_00000"], full["p_00000"])
    assert np.array_equal(pair["p_00002"], full["p_00002"]) and np.array_equal(pair["p_00003"], full["p_00003"])
    assert len(alone) == 1 and len(pair) == 2  # padding samples are discarded


class OomAbove(DiffusionBackend):
    """The real tiny backend, raising CUDA's out-of-memory error for batches above ``limit``."""

    limit = 2
    calls: list[int] = []

    def generate(self, samples, inputs=None):
        self.calls.append(len(samples))
        if len(samples) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return super().generate(samples, inputs)


def test_out_of_memory_halves_the_batch_and_records_it(tiny_models: Path, backend) -> None:
    oom = OomAbove(GeneratorSpec(model=str(tiny_models / "diffusion"), steps=2, height=32, width=32))
    samples = [_s(i) for i in range(8)]
    table = generate_unit(oom, samples, 8)
    assert oom.calls == [8, 4, 2, 2, 2, 2]
    info = meta(table, "synthgen.generate")
    assert info["final_batch_size"] == 2
    assert [e["oom_at_batch_size"] for e in info["oom_retries"]] == [8, 4]
    assert table.column("error").null_count == 8
    ref = _pixels(generate_unit(backend, samples, 2))  # what batch size 2 gives without any OOM
    got = _pixels(table)
    assert all(np.array_equal(got[k], ref[k]) for k in ref)


def test_unreadable_init_image_fails_only_its_sample(backend, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (40, 24), (200, 30, 30)).save(good)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    samples = [_s(0, str(good)), _s(1, str(bad)), _s(2, str(good)), _s(3)]
    inputs = read_inputs(fetch_inputs(samples), samples)
    assert isinstance(inputs["p_00001"], str) and "bad.png" in inputs["p_00001"]
    table = generate_unit(backend, samples, 4, inputs)
    errors = dict(zip(table.column("sample_id").to_pylist(), table.column("error").to_pylist()))
    assert errors["p_00001"].startswith("init_image ") and "UnidentifiedImageError" in errors["p_00001"]
    assert [errors[k] for k in ("p_00000", "p_00002", "p_00003")] == [None] * 3
    # without the fetch stage (in-process use) the backend reads inputs itself: same classification
    table2 = generate_unit(backend, samples, 4)
    assert table2.column("error").null_count == 3
    assert _pixels(table2)["p_00002"] is not None and np.array_equal(_pixels(table2)["p_00002"],
                                                                     _pixels(table)["p_00002"])


class Failing(DiffusionBackend):
    error: Exception = RuntimeError("boom")

    def generate(self, samples, inputs=None):
        raise self.error


def test_other_errors_fail_the_unit_instead_of_making_holes(tiny_models: Path) -> None:
    b = Failing(GeneratorSpec(model=str(tiny_models / "diffusion"), steps=2, height=32, width=32))
    with pytest.raises(RuntimeError, match="boom"):
        generate_unit(b, [_s(0), _s(1)], 2)
    b.error = RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(DeviceLostError, match="illegal memory access"):
        generate_unit(b, [_s(0)], 2)


def test_rerun_regenerates_a_failed_sample(tiny_models: Path, ray_cluster, tmp_path: Path) -> None:
    from pipelines.execution.runner import run

    init = tmp_path / "late.png"
    init.write_bytes(b"\x89PNG\r\n\x1a\n half uploaded")  # unreadable on the first run
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt_id": ["txt", "i2i"], "prompt": ["a red circle", "a blue square"],
                             "seed": [1, 2], "num_images": [2, 2], "init_image": [None, str(init)]}), m)
    out = tmp_path / "ds"
    spec = job_dict(tiny_models, str(out), manifest={"path": str(m)}, unit_size=2, max_failed_fraction=0.5,
                    generator={"steps": 2}, output={"keep_staging": True})
    first = run(JobSpec.model_validate(spec), quiet=True)
    assert first.failed == 2
    Image.new("RGB", (32, 32), (20, 20, 200)).save(init)
    second = run(JobSpec.model_validate(spec), quiet=True, overwrite=True)
    assert second.failed == 0 and second.counts["kept"] == 4
    assert (second.units_reused, second.units_generated) == (1, 1)  # only the unit with the hole
    dec = pq.read_table(out / "decisions.parquet").to_pylist()
    assert all(d["kept"] for d in dec)


class LosesDeviceOnce(DiffusionBackend):
    """The real tiny backend whose first call of a 'devlost*' prompt raises what a dead GPU raises
    (a marker file makes it happen once across all actor processes)."""

    def generate(self, samples, inputs=None):
        import tempfile

        marker = Path(tempfile.gettempdir()) / f"synthgen-{samples[0].prompt_id}.lost"
        if samples[0].prompt_id.startswith("devlost") and not marker.exists():
            marker.write_text("lost")
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        return super().generate(samples, inputs)


def test_a_lost_device_restarts_the_actor_and_redoes_the_unit(tiny_models: Path, ray_cluster, tmp_path: Path) -> None:
    import tempfile
    import uuid

    from pipelines.execution.runner import run

    pid = f"devlost{uuid.uuid4().hex[:8]}"
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt_id": [pid], "prompt": ["a red circle"], "seed": [1], "num_images": [4]}), m)
    spec = job_dict(tiny_models, str(tmp_path / "ds"), manifest={"path": str(m)}, unit_size=2,
                    generator={"steps": 2, "backend": f"{__name__}:LosesDeviceOnce"})
    res = run(JobSpec.model_validate(spec), quiet=True)
    assert (Path(tempfile.gettempdir()) / f"synthgen-{pid}.lost").exists()  # the device was lost once
    assert res.failed == 0 and res.counts["kept"] == 4  # ... and its unit redone on a restarted actor
