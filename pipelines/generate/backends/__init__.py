"""Image generators behind one interface: ``Backend.generate(samples[, inputs]) -> list[uint8 HxWx3]``.

Backends that take input images (img2img, inpainting, style) get them already fetched and decoded
(``SampleInputs``, from the CPU fetch stage) so the GPU actor does no storage I/O or decoding; called
without ``inputs`` they read the URLs themselves (in-process use, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pipelines.config import GeneratorSpec

if TYPE_CHECKING:  # typing only: the generation stage imports without pyarrow (GPU benchmark hosts)
    from pipelines.plan.samples import Sample


class SampleInputError(ValueError):
    """One sample's own input is unusable (unreadable image, a size the model cannot make): that
    sample fails alone, recorded with this error; any other error fails the whole unit."""

    def __init__(self, message: str, sample_ids: list[str] | None = None):
        super().__init__(message)
        self.sample_ids = sample_ids or []


@dataclass(frozen=True)
class SampleInputs:
    """Decoded RGB uint8 input images of one sample, at the sample's size."""

    init: np.ndarray | None = None
    mask: np.ndarray | None = None
    style: np.ndarray | None = None


class Backend(Protocol):
    #: Provenance of the model, recorded with every sample.
    info: dict[str, object]

    def generate(self, samples: list[Sample]) -> list[np.ndarray]: ...


#: Backends by name -> "module:Class", imported only when a job uses them (so the core never imports
#: toyworld). A job may also name any installed class as ``generator.backend: package.module:Class``.
BACKENDS: dict[str, str] = {
    "diffusion": "pipelines.generate.backends.diffusion:DiffusionBackend",
    "gan": "pipelines.generate.backends.gan:GanBackend",
    "style": "pipelines.generate.backends.style:StyleBackend",
    "procedural": "pipelines.toyworld.backend:ProceduralBackend",
}


def backend_class(name: str) -> type:
    """The class a backend name (or ``module:Class`` path) stands for; ValueError if there is none."""
    import importlib

    target = BACKENDS.get(name, name)
    module, sep, cls = target.partition(":")
    if not sep:
        raise ValueError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)}, or 'package.module:Class')")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"backend {name!r}: cannot import {target} ({e})") from None


def load_backend(spec: GeneratorSpec, model_label: str | None = None) -> Backend:
    """The backend for ``spec``; ``model_label`` (the model as the job spec wrote it, not the resolved
    local path) is what its provenance records."""
    backend: Backend = backend_class(spec.backend)(spec)
    if model_label:
        backend.info["model"] = model_label
    return backend


def _local_problem(backend: str, path: Path) -> str | None:
    """What a backend's loader needs in a local model path (its index / config files)."""
    if backend == "diffusion":
        ok = (path / "model_index.json").is_file()
        return None if ok else "is not a diffusers pipeline folder (no model_index.json)"
    if backend == "gan":
        missing = [f for f in ("config.json", "generator.safetensors") if not (path / f).is_file()]
        return f"is not a GAN generator folder (missing {', '.join(missing)})" if missing else None
    if backend != "style":
        return None  # a plug-in backend ('module:Class'): its own loader knows what it needs
    if path.is_file():  # a VGG-19 features state dict
        return None if path.suffix == ".safetensors" else "is not a .safetensors file (style: VGG-19 features)"
    ok = (path / "config.json").is_file() or (path / "vae" / "config.json").is_file()
    return None if ok else "is neither an AutoencoderKL folder nor a pipeline folder with vae/ (style)"


def model_problem(spec: GeneratorSpec, shown: str | None = None, key: str = "generator.model") -> str | None:
    """Why the backend's ``model`` cannot be loaded here, or None: checked before Ray starts, so a job
    that cannot run fails at validation. ``shown``: the value as the spec wrote it."""
    from pipelines.publish.provenance import hub_problem

    shown = shown or spec.model
    if spec.backend not in ("diffusion", "gan", "style"):  # a registered or named class checks its own model
        check = getattr(backend_class(spec.backend), "model_problem", None)
        return check(spec, shown, key) if check else None
    if "://" in spec.model:
        return None  # a remote URL: read by the workers with their credentials
    path = Path(spec.model)
    if path.exists():
        why = _local_problem(spec.backend, path)
        return f"field '{key}': {shown!r} {why}" if why else None
    if spec.backend not in ("diffusion", "gan", "style"):
        return None  # a plug-in backend may name its model any way
    if spec.backend != "diffusion" or path.is_absolute() or shown.startswith((".", "/", "~")):
        return f"field '{key}': {shown!r} not found" + (f" (resolved to {spec.model})" if shown != spec.model else "")
    return hub_problem(key, spec.model, ("model_index.json",), spec.revision)
