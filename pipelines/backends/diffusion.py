"""Any diffusers ``DiffusionPipeline`` (hub id or local path) as a synthgen backend."""

from __future__ import annotations

import numpy as np
import torch

from ..config import GeneratorSpec
from ..plan import Sample
from ..provenance import weights_sha256


class DiffusionBackend:
    """Loads the pipeline once per actor; one call per batch of compatible samples.

    Every sample gets its own CPU ``torch.Generator`` seeded from its sample seed, so the starting
    noise of an image never depends on its batch neighbours or on the device (diffusers draws
    per-generator noise on the CPU and moves it).
    """

    def __init__(self, spec: GeneratorSpec):
        import diffusers

        diffusers.utils.logging.disable_progress_bar()
        self.spec = spec
        dtype = getattr(torch, spec.dtype)
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            spec.model, dtype=dtype, revision=spec.revision, use_safetensors=True
        )
        if getattr(pipe, "safety_checker", None) is not None:
            # synthgen's own safety stage scores and records; it never blacks out images.
            pipe.safety_checker = None
        if spec.scheduler:
            pipe.scheduler = getattr(diffusers, spec.scheduler).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(spec.device)
        self.info = {
            "backend": "diffusion",
            "model": spec.model,
            "weights_sha256": weights_sha256(spec.model),
            "pipeline_class": type(pipe).__name__,
            "scheduler": type(pipe.scheduler).__name__,
            "dtype": spec.dtype,
            "device_type": torch.device(spec.device).type,
        }

    @torch.inference_mode()
    def generate(self, samples: list[Sample]) -> list[np.ndarray]:
        s0 = samples[0]
        assert all(s.compat_key() == s0.compat_key() for s in samples), "batch mixes incompatible samples"
        out = self.pipe(
            prompt=[s.prompt for s in samples],
            negative_prompt=None if s0.negative_prompt is None else [s.negative_prompt for s in samples],
            num_inference_steps=s0.steps,
            guidance_scale=s0.guidance_scale,
            height=s0.height,
            width=s0.width,
            generator=[torch.Generator("cpu").manual_seed(s.seed) for s in samples],
            output_type="np",
        )
        # Same rounding as diffusers' numpy_to_pil.
        images = (np.asarray(out.images, dtype=np.float32) * 255).round().clip(0, 255).astype(np.uint8)
        return list(images)
