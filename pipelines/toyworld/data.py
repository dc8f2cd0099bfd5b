"""Training sets and held-out prompt sets of the toy world.

A fixed, hash-chosen tenth of the single-shape attribute combinations never appears in
training data; evaluation prompts are drawn from exactly those combinations, so the reported
quality bars measure generalisation to unseen prompts, not recall of training captions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pipelines.toyworld.captions import compose
from pipelines.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    DEFAULT_SIZE,
    NODULE_SIDES,
    NODULE_SIZES,
    POSITIONS,
    SHAPES,
    SIZES,
    Attributes,
    ShapeSpec,
    render,
    sample_attributes,
)

HELDOUT_MOD = 10  # one combination in ten is held out
EVAL_SEED_OFFSET = 10_000_000  # image seeds of evaluation samples never collide with training
# The planted prior of the diffusion model's training data: milder than the world's default
# (0.7, which the CLIP and GAN data keep), so the prior stays findable by the bias audit without
# starving red squares and triangles (at 0.7, "red" alone predicted "circle" 69% of the time).
DIFFUSION_SKEW = {"shape": "circle", "attribute": "colour", "value": "red", "probability": 0.4}


def combo_key(spec: ShapeSpec, background: str) -> str:
    return f"{spec.shape}|{spec.colour}|{spec.size}|{spec.position}|{background}"


def is_held_out_combo(spec: ShapeSpec, background: str) -> bool:
    """Stable hash split of (shape, colour, size, position, background) combinations."""
    digest = hashlib.sha256(combo_key(spec, background).encode()).digest()
    return int.from_bytes(digest[:4], "big") % HELDOUT_MOD == 0


def is_held_out(attrs: Attributes) -> bool:
    """Whether an image shows any held-out combination (phantoms are held out by seed only)."""
    return any(is_held_out_combo(s, attrs.background) for s in attrs.shapes)


def held_out_combos() -> list[tuple[ShapeSpec, str]]:
    """All held-out single-shape combinations, in a stable order."""
    return [(ShapeSpec(sh, c, sz, p), bg) for sh in SHAPES for c in COLOURS for sz in SIZES
            for p in POSITIONS for bg in BACKGROUNDS if is_held_out_combo(ShapeSpec(sh, c, sz, p), bg)]


@dataclass(frozen=True)
class Example:
    """One training image's ground truth and the seed it was rendered with."""

    attrs: Attributes
    seed: int


def training_examples(n: int, seed: int, skew_probability: float | None = None) -> list[Example]:
    """n examples from the (skewed) training prior, excluding held-out combinations.

    `skew_probability` overrides the world's planted-prior probability (None: the world's)."""
    rng = np.random.default_rng(seed)
    out: list[Example] = []
    while len(out) < n:
        attrs = sample_attributes(rng, skew_probability=skew_probability)
        if not is_held_out(attrs):
            out.append(Example(attrs, seed * 1_000_003 + len(out)))
    return out


def render_examples(examples: list[Example], size: int = DEFAULT_SIZE) -> np.ndarray:
    """Render examples into an (N, H, W, 3) uint8 array."""
    return np.stack([render(e.attrs, e.seed, size) for e in examples])


@dataclass(frozen=True)
class EvalPrompt:
    """A held-out prompt: text, the attributes it specifies, its group and image seed."""

    prompt: str
    spec: dict[str, str]
    group: str
    seed: int


def _shape_spec(spec: ShapeSpec, background: str, rng: np.random.Generator,
                omit: tuple[str, ...] = ()) -> dict[str, str]:
    out = {"domain": "shapes", "count": "1", "shape": spec.shape, "colour": spec.colour,
           "position": spec.position}
    if rng.random() < 0.5:
        out["size"] = spec.size
    if rng.random() < 0.5:
        out["background"] = background
    return {k: v for k, v in out.items() if k not in omit}


def _phantom_spec(rng: np.random.Generator, omit: tuple[str, ...] = ()) -> dict[str, str]:
    if "nodule_side" not in omit and rng.random() < 0.4:
        return {"domain": "phantom", "nodule": "absent"}
    out = {"domain": "phantom", "nodule": "present",
           "nodule_side": str(rng.choice(NODULE_SIDES)), "nodule_size": str(rng.choice(NODULE_SIZES))}
    return {k: v for k, v in out.items() if k not in omit}


def held_out_pairs() -> dict[tuple[str, str], list[tuple[ShapeSpec, str]]]:
    """Held-out combinations grouped by their (shape, colour) pair, in a stable order."""
    pairs: dict[tuple[str, str], list[tuple[ShapeSpec, str]]] = {}
    for spec, bg in held_out_combos():
        pairs.setdefault((spec.shape, spec.colour), []).append((spec, bg))
    return pairs


def eval_prompts(n_shapes: int = 400, n_phantom: int = 150, seed: int = 1) -> list[EvalPrompt]:
    """Held-out prompts for the quality bars: unseen shape combinations and fresh phantom seeds.

    Shape prompts cycle over the held-out (shape, colour) pairs first and over each pair's
    combinations second, so every pair gets about the same number of prompts (the per-pair
    bar is measured on >= 23 prompts each, not on 7)."""
    rng = np.random.default_rng(seed)
    pairs = list(held_out_pairs().values())
    out = []
    for i in range(n_shapes):
        combos = pairs[i % len(pairs)]
        spec, bg = combos[(i // len(pairs)) % len(combos)]
        s = _shape_spec(spec, bg, rng)
        out.append(EvalPrompt(compose(s, rng), s, "shapes", EVAL_SEED_OFFSET + i))
    for i in range(n_phantom):
        s = _phantom_spec(rng)
        out.append(EvalPrompt(compose(s, rng), s, "phantom", EVAL_SEED_OFFSET + n_shapes + i))
    return out


def audit_prompts(n_per_group: int = 60, seed: int = 2) -> list[EvalPrompt]:
    """Prompts that leave one attribute unspecified, to measure the model's prior for it.

    Groups: `colour|<shape>` (shape and position given, colour not) and `nodule_side`
    (a nodule is requested, its side is not).
    """
    rng = np.random.default_rng(seed)
    out = []
    for shape in SHAPES:
        for i in range(n_per_group):
            spec = ShapeSpec(shape, "red", str(rng.choice(SIZES)), str(rng.choice(POSITIONS)))
            s = _shape_spec(spec, str(rng.choice(list(BACKGROUNDS))), rng, omit=("colour",))
            out.append(EvalPrompt(compose(s, rng), s, f"colour|{shape}",
                                  EVAL_SEED_OFFSET + 500_000 + len(out)))
    for i in range(n_per_group):
        s = _phantom_spec(rng, omit=("nodule_side",))
        out.append(EvalPrompt(compose(s, rng), s, "nodule_side",
                              EVAL_SEED_OFFSET + 500_000 + len(out)))
    return out


def heldout_images(n: int, seed: int = 3, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, list[Attributes]]:
    """Fresh single-shape images of held-out combinations (for CLIP zero-shot evaluation)."""
    rng = np.random.default_rng(seed)
    combos = held_out_combos()
    attrs = [Attributes("shapes", (spec, ), bg) for spec, bg in
             (combos[int(rng.integers(len(combos)))] for _ in range(n))]
    images = np.stack([render(a, EVAL_SEED_OFFSET + 900_000 + i, size) for i, a in enumerate(attrs)])
    return images, attrs
