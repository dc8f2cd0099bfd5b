"""The toy world's renderer as a synthgen generator backend (``generator.backend: procedural``).

It draws exactly the attributes the prompt names (read with the caption parser) and fills the rest
from the world's prior, deterministically from the sample seed, so it makes thousands of images/s
on a CPU with known ground truth: scale, curation and cluster behaviour are testable without a GPU.
Registered by name in ``pipelines.generate.backends.BACKENDS``; the core never imports this module.
"""

from __future__ import annotations

import numpy as np

from pipelines.config import GeneratorSpec
from pipelines.plan.samples import Sample
from pipelines.toyworld import world
from pipelines.toyworld.captions import object_keys, parse_caption

#: Opposite anchors of a two-shape image (they never touch).
_OPPOSITE = {a: b for pair in world.PAIRS for a, b in (pair, pair[::-1])}


def attributes_for(prompt: str, seed: int) -> world.Attributes:
    """The prompt's attributes, the unnamed ones drawn from the prior (seeded by ``seed`` alone)."""
    spec = parse_caption(prompt)
    rng = np.random.default_rng([seed, 7])  # a stream apart from the renderer's ([seed, size])
    if not spec:
        return world.sample_attributes(rng)
    if spec["domain"] == "phantom":
        nodule = spec.get("nodule") or ("present" if rng.random() < world.P_NODULE else "absent")
        if nodule == "absent":
            return world.Attributes("phantom")
        side = spec.get("nodule_side") or world._choice(rng, world.NODULE_SIDES)
        return world.Attributes("phantom", nodule_side=side,
                                nodule_size=spec.get("nodule_size") or world._choice(rng, world.NODULE_SIZES))
    count = int(spec["count"])
    named = [{k: spec[key] for k, key in object_keys(i).items() if key in spec} for i in range(count)]
    positions = [o.get("position") for o in named]
    if count == 1 and positions[0] is None:
        positions = [world._choice(rng, world.POSITIONS)]
    elif count >= 2:
        first = next((p for p in positions if p), None) or world.PAIRS[int(rng.integers(len(world.PAIRS)))][0]
        fill = [first, _OPPOSITE.get(first, "centre")]
        positions = [p or next(f for f in fill if f not in positions) for p in positions[:2]]
        named = named[:2]
    shapes = []
    for obj, position in zip(named, positions):
        shape = obj.get("shape") or world._choice(rng, world.SHAPES)
        colour = obj.get("colour") or world.sample_colour(rng, shape)
        shapes.append(world.ShapeSpec(shape, colour, obj.get("size") or world._choice(rng, world.SIZES), position))
    background = spec.get("background") or world._choice(rng, tuple(world.BACKGROUNDS))
    return world.Attributes("shapes", tuple(shapes), background)


class ProceduralBackend:
    """Renders each sample alone (no batching effects): an image is a pure function of prompt, seed, size."""

    def __init__(self, spec: GeneratorSpec):
        self.spec = spec
        self.info = {"backend": "procedural", "model": spec.model, "weights_sha256": None,
                     "pipeline_class": f"{__name__}.ProceduralBackend", "scheduler": "none", "dtype": "uint8",
                     "device_type": "cpu"}

    @staticmethod
    def model_problem(spec: GeneratorSpec, shown: str | None = None, key: str = "generator.model") -> str | None:
        """No weights to check: ``model`` is only a label recorded in provenance."""
        return None

    def generate(self, samples: list[Sample], inputs: object = None) -> list[np.ndarray]:
        out = []
        for s in samples:
            if s.height != s.width:
                raise ValueError(f"sample {s.sample_id}: the procedural backend renders squares "
                                 f"(height {s.height} != width {s.width})")
            out.append(world.render(attributes_for(s.prompt, s.seed), s.seed, s.height))
        return out
