"""Seeded procedural generator of the toy world's two domains: coloured shapes and chest phantoms.

Every image is a pure function of (attributes, seed, size), so datasets are reproducible and the
ground truth of every image is known. The training prior is uniform except for one deliberately
planted skew (circles are mostly red), which the bias audit is expected to find.

Geometry is expressed in fractions of the image side so any size works; 32x32 is the default
because the shipped models are trained at that size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_SIZE = 32
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 30),
    "green": (40, 170, 60),
    "blue": (40, 90, 225),
    "purple": (150, 50, 210),
}
BACKGROUNDS: dict[str, int] = {"white": 245, "gray": 128, "black": 15}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
# Canonical object order of two-shape images: the left or top shape comes first.
POSITION_ORDER = ("left", "top", "centre", "right", "bottom")
# Anchor (x, y) of each position as a fraction of the image side.
ANCHORS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
# Radius-like half extent of a shape, as a fraction of the side.
RADIUS = {"small": 0.11, "large": 0.17}
# Two shapes always sit on opposite anchors so they never touch.
PAIRS = (("left", "right"), ("top", "bottom"))
JITTER_ONE, JITTER_TWO = 0.03, 0.015

NODULE_SIDES = ("left", "right")
NODULE_SIZES = ("small", "large")
NODULE_RADIUS = {"small": 0.05, "large": 0.08}
LUNG_HALF_WIDTH = 0.14

# Domain mix and the planted prior of the training distribution.
P_PHANTOM = 0.25
P_TWO_SHAPES = 0.25
P_NODULE = 0.5
PLANTED_SKEW = {"shape": "circle", "attribute": "colour", "value": "red", "probability": 0.7}


@dataclass(frozen=True)
class ShapeSpec:
    """One shape of a shapes-domain image."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Attributes:
    """Ground truth of one image; `flat()` gives the judge's key space."""

    domain: str
    shapes: tuple[ShapeSpec, ...] = field(default_factory=tuple)
    background: str = ""
    nodule_side: str = "none"  # patient side, radiological convention
    nodule_size: str = "none"

    def flat(self) -> dict[str, str]:
        """Attributes as the flat string map used by the judge, captions and audits."""
        if self.domain == "phantom":
            present = self.nodule_side != "none"
            return {
                "domain": "phantom",
                "nodule": "present" if present else "absent",
                "nodule_side": self.nodule_side,
                "nodule_size": self.nodule_size,
            }
        out = {"domain": "shapes", "count": str(len(self.shapes)), "background": self.background}
        for i, spec in enumerate(canonical_order(self.shapes)):
            suffix = "" if i == 0 else f"_{i + 1}"
            out |= {f"shape{suffix}": spec.shape, f"colour{suffix}": spec.colour,
                    f"size{suffix}": spec.size, f"position{suffix}": spec.position}
        return out


def canonical_order(shapes: tuple[ShapeSpec, ...]) -> tuple[ShapeSpec, ...]:
    """Order shapes left/top first so that two-shape attributes have a stable key order."""
    return tuple(sorted(shapes, key=lambda s: POSITION_ORDER.index(s.position)))


def _choice(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def sample_colour(rng: np.random.Generator, shape: str, skewed: bool = True,
                  skew_probability: float | None = None) -> str:
    """Colour prior: uniform, except the planted skew (circles mostly red) when `skewed`.

    `skew_probability` overrides the world's planted probability (the diffusion model is
    trained on a milder skew than the world's default, see `data.DIFFUSION_SKEW`)."""
    skew = PLANTED_SKEW
    p = float(skew["probability"]) if skew_probability is None else skew_probability
    if skewed and shape == skew["shape"] and rng.random() < p:
        return str(skew["value"])
    return _choice(rng, tuple(COLOURS))


def sample_shape_spec(rng: np.random.Generator, position: str, skewed: bool = True,
                      skew_probability: float | None = None) -> ShapeSpec:
    """Draw one shape at a given position from the training prior."""
    shape = _choice(rng, SHAPES)
    return ShapeSpec(shape, sample_colour(rng, shape, skewed, skew_probability),
                     _choice(rng, SIZES), position)


def sample_attributes(rng: np.random.Generator, domain: str | None = None,
                      skewed: bool = True, skew_probability: float | None = None) -> Attributes:
    """Draw an attribute set from the world's prior (the training distribution)."""
    if domain is None:
        domain = "phantom" if rng.random() < P_PHANTOM else "shapes"
    if domain == "phantom":
        if rng.random() >= P_NODULE:
            return Attributes("phantom")
        return Attributes("phantom", nodule_side=_choice(rng, NODULE_SIDES),
                          nodule_size=_choice(rng, NODULE_SIZES))
    background = _choice(rng, tuple(BACKGROUNDS))
    if rng.random() < P_TWO_SHAPES:
        pair = PAIRS[int(rng.integers(len(PAIRS)))]
        specs = tuple(sample_shape_spec(rng, p, skewed, skew_probability) for p in pair)
    else:
        specs = (sample_shape_spec(rng, _choice(rng, POSITIONS), skewed, skew_probability),)
    return Attributes("shapes", specs, background)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel sample coordinates in units of the image side."""
    n = size * SUPERSAMPLE
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    return np.meshgrid(c, c)  # x varies along columns, y along rows


def _downsample(hi: np.ndarray) -> np.ndarray:
    """Box-filter a supersampled array back to the image grid (anti-aliasing)."""
    n = hi.shape[0] // SUPERSAMPLE
    return hi.reshape(n, SUPERSAMPLE, n, SUPERSAMPLE, *hi.shape[2:]).mean(axis=(1, 3))


def shape_mask(shape: str, cx: float, cy: float, r: float, x: np.ndarray,
               y: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape with half extent r centred (by bounding box) at (cx, cy)."""
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        h = 0.886 * r  # same area as the circle
        return (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    if shape == "triangle":
        h = 1.1 * r  # upright isosceles, base = height = 2h
        t = (y - (cy - h)) / (2 * h)  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(x - cx) <= t * h)
    raise ValueError(f"unknown shape {shape!r}")


def render_shapes(attrs: Attributes, rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw a shapes-domain image: achromatic background, saturated anti-aliased shapes."""
    x, y = _grid(size)
    bg = BACKGROUNDS[attrs.background] + rng.integers(-8, 9)
    hi = np.full((*x.shape, 3), float(bg), dtype=np.float32)
    jitter = JITTER_ONE if len(attrs.shapes) == 1 else JITTER_TWO
    for spec in attrs.shapes:
        ax, ay = ANCHORS[spec.position]
        cx, cy = ax + rng.uniform(-jitter, jitter), ay + rng.uniform(-jitter, jitter)
        r = RADIUS[spec.size] * rng.uniform(0.93, 1.07)
        colour = np.clip(np.array(COLOURS[spec.colour]) + rng.integers(-10, 11, 3), 0, 255)
        hi[shape_mask(spec.shape, cx, cy, r, x, y)] = colour
    img = _downsample(hi) + rng.normal(0.0, 2.0, (size, size, 1))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float,
             ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def lung_centres(size_jitter: float = 0.0) -> dict[str, tuple[float, float]]:
    """Image-space centre of each lung by patient side (patient right is image left)."""
    return {"right": (0.31 - size_jitter, 0.5), "left": (0.69 + size_jitter, 0.5)}


def _nodule_centre(rng: np.random.Generator, cx: float, cy: float, r: float,
                   lung_ry: float) -> tuple[float, float]:
    """Nodule centre well inside the lung ellipse, so the nodule never touches the lung edge."""
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    while True:
        dx, dy = rng.uniform(-0.015, 0.015), rng.uniform(-0.12, 0.12)
        px, py = dx + r * np.cos(angles), dy + r * np.sin(angles)
        if np.max((px / LUNG_HALF_WIDTH) ** 2 + (py / lung_ry) ** 2) <= 0.75**2:
            return cx + dx, cy + dy


def render_phantom(attrs: Attributes, rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw a frontal chest phantom: body, two dark lungs, spine, faint ribs, optional nodule."""
    x, y = _grid(size)
    spread = rng.uniform(-0.02, 0.02)
    hi = np.full(x.shape, 10.0, dtype=np.float32)
    hi[_ellipse(x, y, 0.5, 0.55, 0.44 + spread, 0.47)] = rng.uniform(140, 160)
    lung_level = rng.uniform(60, 80)
    lung_ry = 0.26 + rng.uniform(-0.02, 0.02)
    lungs = {side: _ellipse(x, y, cx, cy, LUNG_HALF_WIDTH, lung_ry)
             for side, (cx, cy) in lung_centres(spread).items()}
    ribs = 12.0 * (np.sin(2 * np.pi * (y * 7.0 + rng.uniform(0, 1))) > 0.6)
    for mask in lungs.values():
        hi[mask] = lung_level + ribs[mask]
    hi[(np.abs(x - 0.5) < 0.035) & (y > 0.15)] = rng.uniform(180, 200)  # spine
    if attrs.nodule_side != "none":
        cx, cy = lung_centres(spread)[attrs.nodule_side]
        r = NODULE_RADIUS[attrs.nodule_size] * rng.uniform(0.93, 1.07)
        nx, ny = _nodule_centre(rng, cx, cy, r, lung_ry)
        hi[(x - nx) ** 2 + (y - ny) ** 2 <= r * r] = rng.uniform(200, 220)
    img = _downsample(hi) + rng.normal(0.0, 3.0, (size, size))
    grey = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def render(attrs: Attributes, seed: int, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Render an attribute set to an HxWx3 uint8 image; deterministic in (attrs, seed, size)."""
    rng = np.random.default_rng([seed, size])
    if attrs.domain == "phantom":
        return render_phantom(attrs, rng, size)
    return render_shapes(attrs, rng, size)
