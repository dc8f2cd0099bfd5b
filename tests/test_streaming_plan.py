"""The streaming plan (row ranges, expanded per unit) equals the materialised one it replaced."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pipelines.config import GeneratorSpec, ScreenSpec
from pipelines.plan import manifest, screen
from pipelines.plan import samples as plan

GEN = GeneratorSpec(model="m", steps=5, guidance_scale=2.0, height=32, width=32)
SCREEN = ScreenSpec(terms=["gore"])


def _manifest(n_rows: int, seed: int):
    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        row = {"prompt_id": f"p{i}", "prompt": rng.choice(["a red circle", "a blue square", "gore and a circle"]),
               "seed": rng.randrange(2**62), "num_images": rng.choice([1, 1, 2, 3, 7, 40])}
        if rng.random() < 0.2:
            row["steps"] = rng.randrange(1, 9)
        if rng.random() < 0.2:
            row["negative_prompt"] = "blurry"
        rows.append(row)
    return manifest.to_canonical(rows)


def _reference(table, unit_size):
    """Today's path: every sample, screened, then cut into units."""
    keep, screened = screen.screen(plan.expand(table, GEN), SCREEN)
    return plan.units(keep, unit_size), screened


@pytest.mark.parametrize("seed,unit_size", [(0, 1), (1, 5), (2, 8), (3, 64), (4, 1000)])
def test_unit_ranges_expand_to_exactly_todays_units(seed, unit_size):
    table = _manifest(60, seed)
    ref_units, ref_screened = _reference(table, unit_size)
    p = plan.Plan(table, GEN, SCREEN, unit_size)
    units = p.units()
    assert [u.unit_id for u in units] == [u.unit_id for u in ref_units]
    for u, ref in zip(units, ref_units):
        again = plan.UnitRange.from_json(u.to_json())  # the wire form the workers get
        assert plan.unit_samples(table, again, GEN) == list(ref.samples)
    assert p.screened() == ref_screened
    assert len(p.samples) == len(plan.expand(table, GEN)) and list(p.samples) == plan.expand(table, GEN)
    assert p.n_generate == sum(len(u.samples) for u in ref_units)


def test_planned_samples_index_like_a_list():
    table = _manifest(30, 9)
    every = plan.expand(table, GEN)
    p = plan.Plan(table, GEN, SCREEN, 4)
    for i in (0, 1, len(every) // 2, len(every) - 1, -1):
        assert p.samples[i] == every[i]
    assert p.samples[3:9] == every[3:9]
    with pytest.raises(IndexError):
        p.samples[len(every)]


def test_everything_screened_gives_no_units():
    table = manifest.to_canonical([{"prompt_id": "a", "prompt": "gore", "seed": 1, "num_images": 3}])
    p = plan.Plan(table, GEN, SCREEN, 2)
    assert p.units() == [] and p.n_generate == 0 and len(p.samples) == 3
    assert [s["sample_id"] for s in p.screened()] == ["a_00000", "a_00001", "a_00002"]


def test_a_different_manifest_under_a_unit_fails_loudly():
    table = _manifest(20, 5)
    unit = plan.Plan(table, GEN, SCREEN, 10).units()[1]
    with pytest.raises(ValueError, match="not the planned manifest"):
        plan.unit_samples(table.slice(0, unit.row_lo + 1), unit, GEN)


def test_plan_holds_counts_not_samples():
    """1M samples planned: the plan's arrays are per row and per unit, no Sample is made."""
    table = manifest.to_canonical([{"prompt_id": f"p{i}", "prompt": "a red circle", "seed": i, "num_images": 100}
                                   for i in range(10_000)])
    p = plan.Plan(table, GEN, SCREEN, 256)
    units = p.units()
    assert len(p.samples) == 1_000_000 and len(units) == 3907 and units[-1].n == 1_000_000 - 3906 * 256
    assert units[1] == plan.UnitRange("u000001", 2, 6, 56, 256)
    assert isinstance(p.cum, np.ndarray) and p.cum.shape == (10_000,)
