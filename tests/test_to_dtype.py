"""The loaded pipeline is in the spec's dtype, also after img2img/inpaint pipelines are derived
from it (``from_pipe``), in the pattern of diffusers' own ``test_to_dtype``: a ``dtype=`` that an
older diffusers silently ignored, or a ``from_pipe`` that casts back to float32, fails here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.config import GeneratorSpec
from pipelines.generate.backends.diffusion import DiffusionBackend
from pipelines.plan.samples import Sample


def _dtypes(pipe) -> set[torch.dtype]:
    comps = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    assert comps, "the pipeline has no torch components"
    declared = {c.dtype for c in comps if hasattr(c, "dtype")}
    params = {p.dtype for c in comps for p in c.parameters() if p.is_floating_point()}
    return declared | params


def _sample(init: str | None = None, mask: str | None = None) -> Sample:
    return Sample("s_00000", "s", 0, "a red circle", None, 3, 2, 3.0, 32, 32, {}, init, mask)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_components_are_in_the_spec_dtype_including_derived_pipelines(tiny_models: Path, tmp_path: Path,
                                                                      dtype: str) -> None:
    want = getattr(torch, dtype)
    backend = DiffusionBackend(GeneratorSpec(model=str(tiny_models / "diffusion"), dtype=dtype))
    assert _dtypes(backend.pipe) == {want}
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "i.png")
    for init, mask in ((str(tmp_path / "i.png"), None), (str(tmp_path / "i.png"), str(tmp_path / "i.png"))):
        derived, _ = backend._pipe_for(_sample(init, mask))
        assert derived is not backend.pipe
        assert _dtypes(derived) == {want}, type(derived).__name__
    assert _dtypes(backend.pipe) == {want}  # deriving did not cast the shared components
    assert backend.info["dtype"] == dtype


def test_float16_generates_on_cpu(tiny_models: Path) -> None:
    backend = DiffusionBackend(GeneratorSpec(model=str(tiny_models / "diffusion"), dtype="float16"))
    (img,) = backend.generate([_sample()])
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.std() > 0


def test_cuda_defaults_are_the_fast_path_and_cpu_defaults_unchanged() -> None:
    cpu = GeneratorSpec(model="m")
    assert (cpu.dtype, cpu.channels_last, cpu.compile, cpu.pad_batches, cpu.vae_slicing) == \
        ("float32", False, False, False, False)
    gpu = GeneratorSpec(model="m", device="cuda", compile=True, height=1024, width=1024)
    assert (gpu.dtype, gpu.channels_last, gpu.pad_batches, gpu.vae_slicing, gpu.attention) == \
        ("float16", True, True, True, "sdpa")
    assert GeneratorSpec(model="m", device="cuda", dtype="bfloat16", channels_last=False).channels_last is False
