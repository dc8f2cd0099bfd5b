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


def load_backend(spec: GeneratorSpec) -> Backend:
    if spec.backend == "diffusion":
        from pipelines.generate.backends.diffusion import DiffusionBackend

        return DiffusionBackend(spec)
    if spec.backend == "gan":
        from pipelines.generate.backends.gan import GanBackend

        return GanBackend(spec)
    if spec.backend == "style":
        from pipelines.generate.backends.style import StyleBackend

        return StyleBackend(spec)
    raise ValueError(f"unknown backend {spec.backend!r}")
