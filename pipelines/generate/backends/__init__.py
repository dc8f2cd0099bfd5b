"""Image generators behind one interface: ``Backend.generate(samples[, inputs]) -> list[uint8 HxWx3]``.

Backends that take input images (img2img, inpainting, style) get them already fetched and decoded
(``SampleInputs``, from the CPU fetch stage) so the GPU actor does no storage I/O or decoding; called
without ``inputs`` they read the URLs themselves (in-process use, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipelines.config import GeneratorSpec
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


def load_backend(spec: GeneratorSpec) -> Backend:
    return backend_class(spec.backend)(spec)
