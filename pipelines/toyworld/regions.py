"""Named regions of the toy world's chest phantoms, as a synthgen region plug-in for inpainting.

``region_mask(name, height, width)`` -> boolean mask; names: ``left_lung``, ``right_lung`` (patient
sides: patient left is image right), ``lungs``. Each lung's mask is its ellipse widened by the
phantom's largest per-image jitter, so a nodule drawn anywhere inside that lung lies in it.
"""

from __future__ import annotations

import numpy as np

from pipelines.toyworld.world import LUNG_HALF_WIDTH, lung_centres

JITTER = 0.02  # render_phantom's largest spread / lung-height jitter
LUNG_RY = 0.26


def region_mask(name: str, height: int, width: int) -> np.ndarray:
    sides = {"left_lung": ("left",), "right_lung": ("right",), "lungs": ("left", "right")}.get(name)
    if sides is None:
        raise ValueError(f"unknown toy-world region '{name}' (left_lung, right_lung, lungs)")
    y, x = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    mask = np.zeros((height, width), bool)
    for side in sides:
        cx, cy = lung_centres(0.0)[side]
        rx, ry = LUNG_HALF_WIDTH + JITTER, LUNG_RY + JITTER
        mask |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
    return mask
