"""Class-conditional GAN generators (safetensors + config.json) as a synthgen backend.

A sample's conditioning labels are its manifest ``attributes`` restricted to the generator's label
vocabulary (``config.json: attributes``); unspecified labels are drawn from the model's prior,
deterministically from the sample seed. The latent is drawn from the sample's own generator, so
batch composition never changes an image.

The architecture is a plug-in: ``config.json: module`` names an installed module with
``load_generator(dir)`` and ``generate(model, labels, seeds)`` (the toy GAN names
``pipelines.toyworld.gan``), so the core imports no particular GAN. Only installed modules are
imported, never code from the model folder (the same line as ``trust_remote_code=False``).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import torch

from pipelines.config import GeneratorSpec
from pipelines.generate.backends import SampleInputError
from pipelines.plan.samples import Sample
from pipelines.publish.provenance import weights_sha256


class GanBackend:
    def __init__(self, spec: GeneratorSpec):
        self.spec = spec
        self.arch = architecture(spec.model)
        model, self.config = self.arch.load_generator(spec.model)
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
        size = int(self.config["image_size"])
        bad = [s.sample_id for s in samples if (s.height, s.width) != (size, size)]
        if bad:
            raise SampleInputError(f"GAN generates {size}x{size} only; samples {bad[:3]} ask for another size", bad)
        return list(self.arch.generate(self.model, [self.labels(s) for s in samples], [s.seed for s in samples]))


def architecture(model_dir: str):
    """The module named by the generator's ``config.json: module`` (see the module docstring)."""
    config_path = Path(model_dir) / "config.json"
    try:
        name = json.loads(config_path.read_text()).get("module")
    except (OSError, ValueError) as e:
        raise ValueError(f"{config_path}: not a readable GAN config ({e})") from None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{config_path}: 'module' must name the installed module implementing the GAN")
    return importlib.import_module(name)
