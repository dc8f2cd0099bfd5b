"""Expand manifest rows into samples with stable ids and seeds, and cut them into work units.

Ids and seeds depend only on the manifest row, never on batch, unit or worker, so any sample can
be regenerated alone. Sample ``i`` of a row with seed ``s`` uses seed ``s + i`` (sample 0 is exactly
the row's seed, so a bare diffusers call with that seed reproduces it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, overload

import numpy as np
import pyarrow as pa

from pipelines.config import GeneratorSpec, ScreenSpec

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
    mask_region: str | None = None  # a named region as the inpainting mask (generate/edits.py)
    outpaint: str | None = None  # padding "N" or "l,t,r,b": the init image fitted inside, the rest filled

    @property
    def inpaints(self) -> bool:
        """Inpainting, by a mask file, a named region or an outpainting canvas (all one pipeline)."""
        return bool(self.mask_image or self.mask_region or self.outpaint)

    def compat_key(self) -> tuple[Any, ...]:
        """Samples with equal keys can share one pipeline call (same mode, size and schedule)."""
        return (self.steps, self.guidance_scale, self.height, self.width, self.negative_prompt is None,
                self.init_image is not None, self.inpaints)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_id(prompt_id: str, index: int) -> str:
    """Path- and WebDataset-safe (no dots or slashes); unique because the suffix has a fixed form."""
    return f"{prompt_id}_{index:05d}"


def row_samples(row: dict[str, Any], gen: GeneratorSpec, start: int = 0, stop: int | None = None) -> list[Sample]:
    """Samples ``start..stop`` of one canonical manifest row: the one place a sample is made. A quota
    round's row (``plan/rounds.py``) carries ``first_index``: its samples continue the row's index."""
    stop = row["num_images"] if stop is None else stop
    base = row.get("first_index") or 0
    return [
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
            mask_region=row.get("mask_region"),
            outpaint=row.get("outpaint"),
        )
        for i in range(base + start, base + stop)
    ]


def expand(manifest: pa.Table, gen: GeneratorSpec) -> list[Sample]:
    """Every sample of a manifest, in order (small manifests and tests; runs use ``Plan``)."""
    return [s for row in manifest.to_pylist() for s in row_samples(row, gen)]


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


@dataclass(frozen=True)
class UnitRange:
    """A work unit as a range of manifest rows, not its samples (workers expand it): ``n`` samples
    from sample ``first`` of row ``row_lo`` on, over rows ``row_lo..row_hi-1`` less ``skip_rows``
    (screened rows inside the range). Equal to ``units(expand(...))`` cut after the screen."""

    unit_id: str
    row_lo: int
    row_hi: int
    first: int
    n: int
    skip_rows: tuple[int, ...] = ()
    manifest: str = "manifest.parquet"  # the staged table its rows index (a quota round's own table)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "UnitRange":
        d = json.loads(text)
        return cls(**{**d, "skip_rows": tuple(d["skip_rows"])})


def unit_samples(manifest: pa.Table, unit: UnitRange, gen: GeneratorSpec) -> list[Sample]:
    """The samples of one unit, made from its rows only (on a worker)."""
    skip = set(unit.skip_rows)
    out: list[Sample] = []
    start = unit.first
    for r, row in enumerate(manifest.slice(unit.row_lo, unit.row_hi - unit.row_lo).to_pylist(), unit.row_lo):
        if r in skip:
            continue
        out += row_samples(row, gen, start, min(row["num_images"], start + unit.n - len(out)))
        start = 0
    if len(out) != unit.n:
        raise ValueError(f"unit {unit.unit_id}: manifest rows {unit.row_lo}..{unit.row_hi - 1} hold {len(out)} "
                         f"samples, the plan says {unit.n} (not the planned manifest)")
    return out


class _RowText(NamedTuple):
    """What the prompt screen reads of a sample; the screen is per row, so one per row suffices."""

    sample_id: str  # the row number, to map the verdict back
    prompt_id: str
    prompt: str
    negative_prompt: str | None


def screen_rows(manifest: pa.Table, spec: ScreenSpec) -> tuple[np.ndarray, list[tuple[int, list[str]]]]:
    """(rows to generate as a bool mask, [(screened row, reasons)]): the screen reads only the text,
    which every sample of a row shares, so it runs once per row instead of once per sample."""
    from pipelines.plan import screen

    generate = np.ones(manifest.num_rows, dtype=bool)
    hits: list[tuple[int, list[str]]] = []
    if not spec.enabled:
        return generate, hits
    text = manifest.select(["prompt_id", "prompt", "negative_prompt"])
    offset = 0
    for batch in text.to_batches(max_chunksize=65536):
        cols = batch.to_pydict()
        rows = [_RowText(str(offset + i), *t) for i, t in enumerate(zip(cols["prompt_id"], cols["prompt"],
                                                                          cols["negative_prompt"]))]
        for r in screen.screen(rows, spec)[1]:  # type: ignore[arg-type]
            hits.append((int(r["sample_id"]), r["reasons"]))
        offset += batch.num_rows
    for r, _ in hits:
        generate[r] = False
    return generate, hits


class PlannedSamples(Sequence[Sample]):
    """Every planned sample, made on demand: ``len`` costs nothing and nothing is held."""

    def __init__(self, manifest: pa.Table, gen: GeneratorSpec, counts: np.ndarray):
        self.manifest, self.gen = manifest, gen
        self._cum = np.cumsum(counts)

    def __len__(self) -> int:
        return int(self._cum[-1]) if len(self._cum) else 0

    def __iter__(self) -> Iterator[Sample]:
        for batch in self.manifest.to_batches(max_chunksize=4096):
            for row in batch.to_pylist():
                yield from row_samples(row, self.gen)

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...

    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        r = int(np.searchsorted(self._cum, i, side="right"))
        first = i - (int(self._cum[r - 1]) if r else 0)
        return row_samples(self.manifest.slice(r, 1).to_pylist()[0], self.gen, first, first + 1)[0]


class Plan:
    """The plan as counts: per-row sample counts and which rows generate. Unit boundaries come from a
    prefix sum over the generating rows, so no sample exists on the driver."""

    def __init__(self, manifest: pa.Table, gen: GeneratorSpec, screen: ScreenSpec, unit_size: int,
                 unit_prefix: str = "u", staged_as: str = "manifest.parquet"):
        self.manifest, self.gen, self.unit_size = manifest, gen, unit_size
        self.unit_prefix, self.staged_as = unit_prefix, staged_as
        self.counts = manifest.column("num_images").to_numpy().astype(np.int64)
        self.generate, self.screened_rows = screen_rows(manifest, screen)
        self.rows = np.flatnonzero(self.generate)
        self.cum = np.cumsum(self.counts[self.rows])
        self.samples = PlannedSamples(manifest, gen, self.counts)

    @property
    def n_generate(self) -> int:
        return int(self.cum[-1]) if len(self.cum) else 0

    def screened(self) -> list[dict[str, Any]]:
        """One ``{sample_id, prompt_id, reasons}`` per screened sample, in sample order."""
        pids = self.manifest.column("prompt_id")
        return [{"sample_id": sample_id(pid, i), "prompt_id": pid, "reasons": list(reasons)}
                for r, reasons in self.screened_rows for pid in [pids[r].as_py()] for i in range(self.counts[r])]

    def units(self) -> list[UnitRange]:
        """Fixed-size units over the generating samples in manifest order, as row ranges."""
        if not self.n_generate:
            return []
        counts = self.counts[self.rows]
        starts = np.arange(0, self.n_generate, self.unit_size, dtype=np.int64)
        ns = np.minimum(starts + self.unit_size, self.n_generate) - starts
        lo = np.searchsorted(self.cum, starts, side="right")  # position (in self.rows) of a unit's first row
        hi = np.searchsorted(self.cum, starts + ns - 1, side="right")  # ... and of its last row
        first = starts - (self.cum[lo] - counts[lo])
        row_lo, row_hi = self.rows[lo], self.rows[hi] + 1
        screened = np.flatnonzero(~self.generate)
        a, b = np.searchsorted(screened, row_lo), np.searchsorted(screened, row_hi)
        return [UnitRange(f"{self.unit_prefix}{n:06d}", int(row_lo[n]), int(row_hi[n]), int(first[n]), int(ns[n]),
                          tuple(int(x) for x in screened[a[n]:b[n]]) if b[n] > a[n] else (), self.staged_as)
                for n in range(len(starts))]


def batches(samples: tuple[Sample, ...] | list[Sample], batch_size: int) -> list[list[Sample]]:
    """Deterministic batches within a unit: group compatible samples (stable order), then chunk."""
    groups: dict[tuple[Any, ...], list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.compat_key(), []).append(s)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
