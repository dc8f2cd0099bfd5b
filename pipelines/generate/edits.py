"""Image edits as inpainting inputs: outpainting canvases and named-region masks.

Outpainting is inpainting of a padded canvas: the input image pasted into a larger canvas, the
padding masked white (repaint) and the image black (keep). diffusers' inpainting pipelines accept
both inpainting UNets (9 input channels) and standard 4-channel UNets (they then blend the
known latents back at every step), so any text-to-image pipeline outpaints through
``AutoPipelineForInpainting.from_pipe``. Pure functions on uint8 arrays; no model here.

Named regions (``mask_region: left_lung``) come from a region plug-in, ``module:callable`` taking
``(name, height, width)`` and returning a boolean HxW mask (the toy world's is
``pipelines.toyworld.regions:region_mask``), so the core names no anatomy. A manifest picks a region
by name among the installed plug-ins (``pipelines.plugins.find_region``).

The fetch stage (``generate/inputs.py``) turns both edits into an ordinary inpainting pair (image,
mask) on the CPU; the generator only inpaints and pastes the kept pixels back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipelines.contracts.edits import parse_padding
from pipelines.plugins import find_region, load_ref

__all__ = ["load_region_fn", "named_region_mask", "outpaint_canvas", "parse_padding", "region_mask"]

RegionFn = Callable[[str, int, int], np.ndarray]


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


def named_region_mask(name: str, height: int, width: int) -> np.ndarray:
    """The mask of a manifest's ``mask_region`` (``region`` or ``plugin/region``) at a sample's size."""
    _, fn, region = find_region(name)
    return region_mask(fn, region, height, width)
