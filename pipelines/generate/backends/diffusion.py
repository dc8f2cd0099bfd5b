"""Any diffusers ``DiffusionPipeline`` (hub id or local path) as a synthgen backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pipelines.config import GeneratorSpec
from pipelines.generate.backends import SampleInputError
from pipelines.publish.provenance import component_config_sha256, weights_sha256

if TYPE_CHECKING:  # typing only: the generation stage imports without pyarrow (GPU benchmark hosts)
    from PIL import Image

    from pipelines.plan.samples import Sample

    from pipelines.generate.backends import SampleInputs


def load_image(url: str, width: int, height: int) -> "Image.Image":
    """An input image from any fsspec URL, as RGB at the sample's size."""
    from PIL import Image

    from pipelines.generate.inputs import load_image as load_pixels

    return Image.fromarray(load_pixels(url, width, height))


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
        self.dtype = getattr(torch, spec.dtype)
        # dtype= (not torch_dtype=) needs diffusers >= 0.40; older versions ignore it silently.
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            spec.model, dtype=self.dtype, variant=spec.variant, revision=spec.revision, use_safetensors=True
        )
        if getattr(pipe, "safety_checker", None) is not None:
            # synthgen's own safety stage scores and records; it never blacks out images.
            pipe.safety_checker = None
        if spec.scheduler:
            pipe.scheduler = getattr(diffusers, spec.scheduler).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(spec.device)
        self._fast_path()
        self._derived: dict[str, object] = {}
        self.info = {
            "backend": "diffusion",
            "model": spec.model,
            "weights_sha256": weights_sha256(spec.model, spec.revision),
            "pipeline_class": type(pipe).__name__,
            "scheduler": type(pipe.scheduler).__name__,
            "scheduler_config_sha256": component_config_sha256(pipe.scheduler.config),
            "dtype": spec.dtype,
            "device_type": torch.device(spec.device).type,
            "variant": spec.variant,
            "attention": spec.attention,
            "channels_last": spec.channels_last,
            "compile": spec.compile_mode if spec.compile else None,
        }

    def _fast_path(self) -> None:
        """Attention kernel, memory format, compilation and VAE decoding as the spec says; the
        components are shared with the derived img2img/inpaint pipelines (from_pipe)."""
        spec, pipe = self.spec, self.pipe
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        vae = getattr(pipe, "vae", None)
        if spec.attention == "eager":
            for m in (denoiser, vae):
                if m is not None and hasattr(m, "set_default_attn_processor"):
                    m.set_default_attn_processor()
        if spec.channels_last:
            for m in (denoiser, vae):
                if m is not None:
                    m.to(memory_format=torch.channels_last)
        if vae is not None:
            if spec.vae_slicing and hasattr(vae, "enable_slicing"):
                vae.enable_slicing()
            if spec.vae_tiling and hasattr(vae, "enable_tiling"):
                vae.enable_tiling()
        if spec.compile:
            # in place (nn.Module.compile): the module keeps its class, so from_pipe shares it
            if denoiser is not None:
                denoiser.compile(mode=spec.compile_mode)
            if vae is not None:
                vae.decoder.compile(mode=spec.compile_mode)

    def _pipe_for(self, s: Sample) -> tuple[object, dict[str, object]]:
        """Text-to-image, img2img or inpainting, sharing one set of loaded components (from_pipe)."""
        if s.init_image is None:
            return self.pipe, {"height": s.height, "width": s.width}
        import diffusers

        kind = "inpaint" if s.inpaints else "img2img"
        if kind not in self._derived:
            cls = diffusers.AutoPipelineForInpainting if s.inpaints else diffusers.AutoPipelineForImage2Image
            self._derived[kind] = cls.from_pipe(self.pipe)
            self._derived[kind].set_progress_bar_config(disable=True)
        return self._derived[kind], {"strength": self.spec.strength}

    @torch.inference_mode()
    def generate(self, samples: list[Sample], inputs: list["SampleInputs | None"] | None = None) -> list[np.ndarray]:
        """One pipeline call; ``inputs``: the samples' decoded input images (read here if absent)."""
        from PIL import Image

        s0 = samples[0]
        assert all(s.compat_key() == s0.compat_key() for s in samples), "batch mixes incompatible samples"
        pipe, extra = self._pipe_for(s0)
        inits: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        if s0.init_image is not None:
            inputs = inputs if inputs is not None else [_read(s) for s in samples]
            inits = [_need(x, "init", s) for x, s in zip(inputs, samples)]
            extra["image"] = [Image.fromarray(a) for a in inits]
            if s0.inpaints:
                masks = [_need(x, "mask", s) for x, s in zip(inputs, samples)]
                extra["mask_image"] = [Image.fromarray(m) for m in masks]
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
        return [keep_unmasked(img, init, mask) for img, init, mask in zip(images, inits, masks)] if masks \
            else list(images)


def keep_unmasked(image: np.ndarray, init: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The inpainted image with the input's own pixels outside the mask: the VAE round trip would
    otherwise alter every pixel, and an edit must leave what it keeps byte-identical. Repainted where
    the mask's luma is >= 128, diffusers' own binarisation (0.5) of the mask."""
    m = mask.astype(np.int32)
    luma = m if m.ndim == 2 else (m[..., 0] * 299 + m[..., 1] * 587 + m[..., 2] * 114) // 1000
    return np.where((luma >= 128)[..., None], image, init).astype(np.uint8)


def _read(s: Sample) -> "SampleInputs":
    """In-process use without the fetch stage: read (and for edits, make) the sample's inputs here."""
    from pipelines.generate.inputs import sample_inputs

    try:
        return sample_inputs(s)
    except SampleInputError as e:
        raise SampleInputError(f"sample {s.sample_id}: {e}", [s.sample_id]) from e


def _need(x: "SampleInputs | None", kind: str, s: Sample) -> np.ndarray:
    arr = None if x is None else getattr(x, kind)
    if arr is None:
        raise SampleInputError(f"sample {s.sample_id}: {kind}_image was not fetched", [s.sample_id])
    return arr
