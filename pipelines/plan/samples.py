"""Expand manifest rows into samples with stable ids and seeds, and cut them into work units.

Ids and seeds depend only on the manifest row, never on batch, unit or worker, so any sample can
be regenerated alone. Sample ``i`` of a row with seed ``s`` uses seed ``s + i`` (sample 0 is exactly
the row's seed, so a bare diffusers call with that seed reproduces it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from pipelines.config import GeneratorSpec

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Sample:
    sample_id: str
    prompt_id: str
    index: int
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance_scale: float
    height: int
    width: int
    attributes: dict[str, str] = field(default_factory=dict)
    init_image: str | None = None
    mask_image: str | None = None
    style_image: str | None = None

    def compat_key(self) -> tuple[Any, ...]:
        """Samples with equal keys can share one pipeline call (same mode, size and schedule)."""
        return (self.steps, self.guidance_scale, self.height, self.width, self.negative_prompt is None,
                self.init_image is not None, self.mask_image is not None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_id(prompt_id: str, index: int) -> str:
    """Path- and WebDataset-safe (no dots or slashes); unique because the suffix has a fixed form."""
    return f"{prompt_id}_{index:05d}"


def expand(manifest: pa.Table, gen: GeneratorSpec) -> list[Sample]:
    out: list[Sample] = []
    for row in manifest.to_pylist():
        for i in range(row["num_images"]):
            out.append(
                Sample(
                    sample_id=sample_id(row["prompt_id"], i),
                    prompt_id=row["prompt_id"],
                    index=i,
                    prompt=row["prompt"],
                    negative_prompt=row["negative_prompt"],
                    seed=(row["seed"] + i) % MAX_SEED,
                    steps=row["steps"] or gen.steps,
                    guidance_scale=row["guidance_scale"] if row["guidance_scale"] is not None else gen.guidance_scale,
                    height=row["height"] or gen.height,
                    width=row["width"] or gen.width,
                    attributes=dict(row["attributes"] or []),
                    init_image=row["init_image"],
                    mask_image=row["mask_image"],
                    style_image=row["style_image"],
                )
            )
    return out


@dataclass(frozen=True)
class WorkUnit:
    unit_id: str
    samples: tuple[Sample, ...]


def units(samples: list[Sample], unit_size: int) -> list[WorkUnit]:
    """Fixed-size units in manifest order: the same manifest always yields the same units."""
    return [
        WorkUnit(unit_id=f"u{n:06d}", samples=tuple(samples[i : i + unit_size]))
        for n, i in enumerate(range(0, len(samples), unit_size))
    ]


def batches(samples: tuple[Sample, ...] | list[Sample], batch_size: int) -> list[list[Sample]]:
    """Deterministic batches within a unit: group compatible samples (stable order), then chunk."""
    groups: dict[tuple[Any, ...], list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.compat_key(), []).append(s)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
