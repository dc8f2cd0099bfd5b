"""Class-conditional GAN generators (safetensors + config.json) as a synthgen backend.

A sample's conditioning labels are its manifest ``attributes`` restricted to the generator's label
vocabulary (``config.json: attributes``); unspecified labels are drawn from the model's prior,
deterministically from the sample seed. The latent is drawn from the sample's own generator, so
batch composition never changes an image.
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines.config import GeneratorSpec
from pipelines.plan.samples import Sample
from pipelines.publish.provenance import weights_sha256


class GanBackend:
    def __init__(self, spec: GeneratorSpec):
        from pipelines.toyworld.gan import load_generator

        self.spec = spec
        model, self.config = load_generator(spec.model)
        self.model = model.to(spec.device)
        self.vocabulary: dict[str, list[str]] = self.config["attributes"]
        self.info = {
            "backend": "gan",
            "model": spec.model,
            "weights_sha256": weights_sha256(spec.model),
            "pipeline_class": f"{type(model).__module__}.{type(model).__name__}",
            "scheduler": "none",
            "dtype": "float32",
            "device_type": torch.device(spec.device).type,
        }

    def labels(self, s: Sample) -> dict[str, str]:
        return {k: v for k, v in s.attributes.items() if k in self.vocabulary}

    def generate(self, samples: list[Sample]) -> list[np.ndarray]:
        from pipelines.toyworld.gan import generate

        size = int(self.config["image_size"])
        bad = [s.sample_id for s in samples if (s.height, s.width) != (size, size)]
        if bad:
            raise ValueError(f"GAN generates {size}x{size} only; samples {bad[:3]} ask for another size")
        return list(generate(self.model, [self.labels(s) for s in samples], [s.seed for s in samples]))
