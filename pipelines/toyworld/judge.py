"""Non-learned judge: recovers toy-world attributes from any image by plain image analysis.

Because no learned model is involved, the judge's verdicts on model outputs are an honest
measurement (a model cannot game it by sharing a bias with it). Shapes are found as saturated
connected components on an achromatic background; their colour comes from hue, their shape from
the best-fitting procedural template (analysis by synthesis with the world's own masks), their
size from the coverage-weighted area. Phantoms are parsed as body -> two dark lungs -> bright
blobs inside a lung. Anything that does not parse is reported as "unknown", never guessed.
"""

from __future__ import annotations

import colorsys
from itertools import permutations

import numpy as np
from PIL import Image
from scipy import ndimage

from pipelines.toyworld.captions import object_keys
from pipelines.toyworld.world import (
    ANCHORS,
    BACKGROUNDS,
    COLOURS,
    NODULE_RADIUS,
    POSITION_ORDER,
    RADIUS,
    SHAPES,
    _downsample,
    _grid,
    shape_mask,
)

UNKNOWN = "unknown"
CHROMA_MIN = 50.0  # chroma (max-min of RGB) separating a coloured shape from a grey background
GREY_MAX = 15.0  # mean chroma below which an image counts as greyscale
SHAPE_AREA = {"circle": np.pi, "square": (2 * 0.886) ** 2, "triangle": (2 * 1.1) ** 2 / 2}
MIN_AREA = 0.3 * np.pi * RADIUS["small"] ** 2  # smallest component that counts as a shape
SIZE_RADIUS_SPLIT = float(np.sqrt(RADIUS["small"] * RADIUS["large"]))
MAX_FOREGROUND = 0.4  # two large shapes cover ~0.2 of the image; far more is not this world
MIN_FIT = 0.5  # template IoU below which the shape is "unknown"
NODULE_AREA_SPLIT = float(np.pi * NODULE_RADIUS["small"] * NODULE_RADIUS["large"])
MIN_NODULE_AREA = 0.25 * np.pi * NODULE_RADIUS["small"] ** 2
_HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360
         for name, rgb in COLOURS.items()}


def to_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """Any PIL image or HxW(x3/4) array as a square HxWx3 uint8 array."""
    if isinstance(image, np.ndarray) and image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255 if image.max() <= 1.0 else image), 0, 255)
        image = image.astype(np.uint8)
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    pil = pil.convert("RGB")
    if pil.width != pil.height:
        side = min(pil.size)
        pil = pil.resize((side, side), Image.BILINEAR)
    return np.asarray(pil)


def colour_name(rgb: np.ndarray) -> str:
    """Nearest palette colour by hue; "unknown" for greyish pixels."""
    r, g, b = (float(v) / 255 for v in rgb)
    hue, sat, _ = colorsys.rgb_to_hsv(r, g, b)
    if (max(r, g, b) - min(r, g, b)) * 255 < CHROMA_MIN or sat < 0.3:
        return UNKNOWN
    dist = {n: min(abs(hue * 360 - h), 360 - abs(hue * 360 - h)) for n, h in _HUES.items()}
    return min(dist, key=dist.__getitem__)


def _nearest(value: float, levels: dict[str, float], tolerance: float) -> str:
    name = min(levels, key=lambda k: abs(levels[k] - value))
    return name if abs(levels[name] - value) <= tolerance else UNKNOWN


def _fit_shape(cov: np.ndarray, area: float, cx: float, cy: float) -> tuple[str, float, float]:
    """Best procedural template for a coverage map: (shape, centre x, centre y) in side units."""
    x, y = _grid(cov.shape[0])
    best, best_iou, centre = UNKNOWN, MIN_FIT, (cx, cy)
    for shape in SHAPES:
        r = float(np.sqrt(area / SHAPE_AREA[shape]))
        ty = cy - 1.1 * r / 3 if shape == "triangle" else cy  # centroid -> bounding-box centre
        tmpl = _downsample(shape_mask(shape, cx, ty, r, x, y).astype(np.float32))
        iou = float(np.minimum(cov, tmpl).sum() / max(np.maximum(cov, tmpl).sum(), 1e-6))
        if iou > best_iou:
            best, best_iou, centre = shape, iou, (cx, ty)
    return best, *centre


def _position(cx: float, cy: float) -> str:
    dist = {p: np.hypot(cx - ax, cy - ay) for p, (ax, ay) in ANCHORS.items()}
    name = min(dist, key=dist.__getitem__)
    return name if dist[name] <= 0.2 else UNKNOWN


def _object(img: np.ndarray, chroma: np.ndarray, comp: np.ndarray) -> dict[str, str]:
    """Attributes of one connected component of saturated pixels."""
    side = img.shape[0]
    core = chroma[comp] >= 0.7 * chroma[comp].max()
    colour = colour_name(np.median(img[comp][core], axis=0))
    region = ndimage.binary_dilation(comp, iterations=1)
    cov = np.where(region, np.clip(chroma / np.median(chroma[comp][core]), 0, 1), 0.0)
    area = float(cov.sum()) / side**2
    rows, cols = np.indices(cov.shape)
    cx = float((cov * (cols + 0.5)).sum() / cov.sum()) / side
    cy = float((cov * (rows + 0.5)).sum() / cov.sum()) / side
    shape, sx, sy = _fit_shape(cov, area, cx, cy)
    radius = np.sqrt(area / SHAPE_AREA.get(shape, np.pi))
    return {"shape": shape, "colour": colour,
            "size": "small" if radius < SIZE_RADIUS_SPLIT else "large",
            "position": _position(sx, sy)}


def judge_shapes(img: np.ndarray) -> dict[str, str] | None:
    """Judge a shapes-domain image; None when no saturated component is found."""
    rgb = img.astype(np.float32)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    labels, n = ndimage.label(chroma >= CHROMA_MIN, structure=np.ones((3, 3)))
    if n == 0:
        return None
    areas = ndimage.sum_labels(np.ones_like(chroma), labels, index=np.arange(1, n + 1))
    keep = [i + 1 for i in np.argsort(-areas) if areas[i] >= MIN_AREA * img.shape[0] ** 2]
    if not keep:
        return None
    if areas.sum() > MAX_FOREGROUND * img.shape[0] ** 2:
        return {"domain": UNKNOWN}  # not shapes on a background (noise, photo, ...)
    objects = [_object(img, chroma, labels == i) for i in keep[:2]]
    objects.sort(key=lambda o: POSITION_ORDER.index(o["position"])
                 if o["position"] in POSITION_ORDER else len(POSITION_ORDER))
    fg = ndimage.binary_dilation(labels > 0, iterations=2)
    bg_rgb = np.median(rgb[~fg], axis=0) if (~fg).any() else np.zeros(3)
    background = UNKNOWN
    if np.ptp(bg_rgb) < 40:
        background = _nearest(float(bg_rgb.mean()), {k: float(v) for k, v in BACKGROUNDS.items()},
                              50.0)
    out = {"domain": "shapes", "count": str(len(keep)), "background": background}
    for i, obj in enumerate(objects):
        out |= {object_keys(i)[k]: v for k, v in obj.items()}
    return out


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of a set of grey levels (between-class variance maximiser)."""
    hist, edges = np.histogram(values, bins=64, range=(0, 256))
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids) / np.maximum(w0, 1)
    m1 = ((hist * mids).sum() - np.cumsum(hist * mids)) / np.maximum(w1, 1)
    return float(mids[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def judge_phantom(img: np.ndarray) -> dict[str, str] | None:
    """Judge a chest phantom; None when the body/two-lung layout is not found."""
    side = img.shape[0]
    grey = img.astype(np.float32).mean(axis=2)
    labels, n = ndimage.label(ndimage.binary_fill_holes(grey > 35))
    if n == 0:
        return None
    body = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    if body.sum() < 0.3 * side**2:
        return None
    threshold = _otsu(grey[body])
    lung_labels, _ = ndimage.label(body & (grey < threshold))
    areas = np.bincount(lung_labels.ravel())[1:]
    lungs = [i + 1 for i in np.argsort(-areas)[:2] if areas[i] >= 0.03 * side**2]
    if len(lungs) != 2:
        return None
    lungs.sort(key=lambda i: ndimage.center_of_mass(lung_labels == i)[1])
    if ndimage.center_of_mass(lung_labels == lungs[0])[1] > side / 2 or \
            ndimage.center_of_mass(lung_labels == lungs[1])[1] < side / 2:
        return None
    nodules = []
    for patient_side, lung in zip(("right", "left"), lungs):  # patient right is image left
        region = ndimage.binary_fill_holes(ndimage.binary_closing(lung_labels == lung))
        lung_level = float(np.median(grey[lung_labels == lung]))
        blobs, k = ndimage.label(region & (grey >= threshold))
        for j in range(1, k + 1):
            blob = ndimage.binary_dilation(blobs == j) & region
            peak = float(grey[blobs == j].max())
            cov = np.clip((grey[blob] - lung_level) / max(peak - lung_level, 1.0), 0, 1)
            area = float(cov.sum()) / side**2  # coverage-weighted, so sub-pixel accurate
            if area >= MIN_NODULE_AREA:
                nodules.append((area, patient_side))
    if not nodules:
        return {"domain": "phantom", "nodule": "absent", "nodule_side": "none",
                "nodule_size": "none"}
    area, patient_side = max(nodules)
    return {"domain": "phantom", "nodule": "present", "nodule_side": patient_side,
            "nodule_size": "small" if area < NODULE_AREA_SPLIT else "large"}


def judge(image: np.ndarray | Image.Image) -> dict[str, str]:
    """Attributes visible in an image, with "unknown" wherever the image does not parse."""
    img = to_array(image)
    verdict = judge_shapes(img)
    if verdict is None and float(np.ptp(img.astype(np.float32), axis=2).mean()) < GREY_MAX:
        verdict = judge_phantom(img)
    return verdict or {"domain": UNKNOWN}


def _object_match(prompt: dict[str, str], judged: dict[str, str],
                  order: tuple[int, ...]) -> dict[str, bool]:
    out = {}
    for i, j in enumerate(order):
        for generic, key in object_keys(i).items():
            if key in prompt:
                out[key] = judged.get(object_keys(j)[generic], UNKNOWN) == prompt[key]
    return out


def agreement(attrs_from_prompt: dict[str, str], judged: dict[str, str]) -> dict[str, bool]:
    """Per prompt attribute, whether the judged image agrees (objects matched in best order)."""
    object_key_set = {k for i in range(2) for k in object_keys(i).values()}
    out = {k: judged.get(k, UNKNOWN) == v for k, v in attrs_from_prompt.items()
           if k not in object_key_set}
    count = max((int(c) for c in (attrs_from_prompt.get("count"), judged.get("count"))
                 if c and c.isdigit()), default=1)
    orders = list(permutations(range(min(count, 2))))
    matches = [_object_match(attrs_from_prompt, judged, o) for o in orders]
    return out | max(matches, key=lambda m: sum(m.values()), default={})
