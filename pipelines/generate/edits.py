"""Image edits as inpainting inputs: outpainting canvases and named-region masks.

Outpainting is inpainting of a padded canvas: the input image pasted into a larger canvas, the
padding masked white (repaint) and the image black (keep). diffusers' inpainting pipelines accept
both inpainting UNets (9 input channels) and standard 4-channel UNets (they then blend the
known latents back at every step), so any text-to-image pipeline outpaints through
``AutoPipelineForInpainting.from_pipe``. Pure functions on uint8 arrays; no model here.

Named regions (``mask_region: left_lung``) come from a region plug-in, ``module:callable`` taking
``(name, height, width)`` and returning a boolean HxW mask (the toy world's is
``pipelines.toyworld.regions:region_mask``), so the core names no anatomy.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from pipelines.plugins import load_ref

RegionFn = Callable[[str, int, int], np.ndarray]
_PAD = re.compile(r"^\s*(\d+)(?:\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+))?\s*$")


def parse_padding(spec: int | str) -> tuple[int, int, int, int]:
    """``N`` (every side) or ``"left,top,right,bottom"`` pixels -> a 4-tuple; ValueError otherwise."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 0:
            raise ValueError(f"outpaint padding must be >= 0, got {spec}")
        return (spec,) * 4
    m = _PAD.match(str(spec))
    if not m:
        raise ValueError(f"outpaint padding must be N or 'left,top,right,bottom' pixels, got {spec!r}")
    if m.group(2) is None:
        return (int(m.group(1)),) * 4
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def outpaint_canvas(image: np.ndarray, padding: tuple[int, int, int, int],
                    fill: str = "edge") -> tuple[np.ndarray, np.ndarray]:
    """(canvas HxWx3 uint8, mask HxW uint8 255 = repaint) for outpainting ``image`` by ``padding``.

    The padding starts as the image's edge pixels (``fill="edge"``) rather than black: the sampler
    starts from noise at full strength anyway, but with strength < 1 an edge fill keeps the
    border's colours instead of pulling the new area towards black."""
    left, top, right, bottom = padding
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"outpaint needs an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    mode = "edge" if fill == "edge" else "constant"
    canvas = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode=mode)
    mask = np.full(canvas.shape[:2], 255, np.uint8)
    mask[top: top + image.shape[0], left: left + image.shape[1]] = 0
    return canvas, mask


def load_region_fn(ref: str) -> RegionFn:
    """``package.module:callable`` -> the region plug-in (imported by name at run time)."""
    return load_ref(ref, "region plug-in")


def region_mask(fn: RegionFn, name: str, height: int, width: int) -> np.ndarray:
    """A named region as an inpainting mask (HxW uint8, 255 = repaint); the plug-in's errors name the region."""
    mask = np.asarray(fn(name, height, width))
    if mask.shape != (height, width):
        raise ValueError(f"region '{name}': plug-in returned a {mask.shape} mask for a {height}x{width} image")
    if not mask.any():
        raise ValueError(f"region '{name}' is empty at {height}x{width}")
    return np.where(mask.astype(bool), 255, 0).astype(np.uint8)
