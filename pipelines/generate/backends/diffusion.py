"""Any diffusers ``DiffusionPipeline`` (hub id or local path) as a synthgen backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pipelines.config import GeneratorSpec
from pipelines.plan.samples import Sample
from pipelines.publish.provenance import weights_sha256

if TYPE_CHECKING:
    from PIL import Image


def load_image(url: str, width: int, height: int) -> "Image.Image":
    """An input image from any fsspec URL, as RGB at the sample's size."""
    import io

    import fsspec
    from PIL import Image

    with fsspec.open(url, "rb") as f:
        im = Image.open(io.BytesIO(f.read()))
        im.load()
    return im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


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
        self._derived: dict[str, object] = {}
        self.info = {
            "backend": "diffusion",
            "model": spec.model,
            "weights_sha256": weights_sha256(spec.model, spec.revision),
            "pipeline_class": type(pipe).__name__,
            "scheduler": type(pipe.scheduler).__name__,
            "dtype": spec.dtype,
            "device_type": torch.device(spec.device).type,
        }

    def _pipe_for(self, s: Sample) -> tuple[object, dict[str, object]]:
        """Text-to-image, img2img or inpainting, sharing one set of loaded components (from_pipe)."""
        if s.init_image is None:
            return self.pipe, {"height": s.height, "width": s.width}
        import diffusers

        kind = "inpaint" if s.mask_image else "img2img"
        if kind not in self._derived:
            cls = diffusers.AutoPipelineForInpainting if s.mask_image else diffusers.AutoPipelineForImage2Image
            self._derived[kind] = cls.from_pipe(self.pipe)
        return self._derived[kind], {"strength": self.spec.strength}

    @torch.inference_mode()
    def generate(self, samples: list[Sample]) -> list[np.ndarray]:
        s0 = samples[0]
        assert all(s.compat_key() == s0.compat_key() for s in samples), "batch mixes incompatible samples"
        pipe, extra = self._pipe_for(s0)
        if s0.init_image is not None:
            extra["image"] = [load_image(s.init_image, s.width, s.height) for s in samples]
            if s0.mask_image is not None:
                extra["mask_image"] = [load_image(s.mask_image, s.width, s.height) for s in samples]
                extra.update(height=s0.height, width=s0.width)
        out = pipe(
            prompt=[s.prompt for s in samples],
            negative_prompt=None if s0.negative_prompt is None else [s.negative_prompt for s in samples],
            num_inference_steps=s0.steps,
            guidance_scale=s0.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(s.seed) for s in samples],
            output_type="np",
            **extra,
        )
        # Same rounding as diffusers' numpy_to_pil.
        images = (np.asarray(out.images, dtype=np.float32) * 255).round().clip(0, 255).astype(np.uint8)
        return list(images)
