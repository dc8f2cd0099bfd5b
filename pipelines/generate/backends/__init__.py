"""Image generators behind one interface: ``Backend.generate(samples) -> list[uint8 HxWx3]``."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipelines.config import GeneratorSpec
from pipelines.plan.samples import Sample


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
