"""Quota planning: round sizing from acceptance, unachievable groups, exact selection."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.curation.targets import GroupStatus, plan_round, select, target_of


def test_round_sized_from_acceptance_and_spread_over_rows():
    status = {"colour=red": GroupStatus(target=12, generated=8, kept=4),    # acceptance 0.5, 8 short
              "colour=blue": GroupStatus(target=12, generated=8, kept=12)}  # met
    plan = plan_round(status, {"colour=red": [3, 7], "colour=blue": [1]}, round_no=1, max_rounds=3,
                      overshoot=1.25)
    assert plan.met == ["colour=blue"] and not plan.unachievable
    assert plan.extra == {3: 10, 7: 10}  # ceil(8 / 0.5 * 1.25) = 20, round-robin over rows 3 and 7


def test_a_group_the_model_cannot_draw_is_declared_not_looped_on():
    status = {"shape=square": GroupStatus(target=12, generated=16, kept=0)}
    plan = plan_round(status, {"shape=square": [0]}, round_no=1, max_rounds=10, min_tries=16)
    assert plan.done and "shape=square" in plan.unachievable
    assert "acceptance 0.000" in plan.unachievable["shape=square"]["reason"]
    # fewer tries than min_tries: try again instead of giving up on noise
    plan = plan_round({"g": GroupStatus(12, 4, 0)}, {"g": [0]}, round_no=1, max_rounds=10, min_tries=16)
    assert plan.extra == {0: 12} and not plan.unachievable


def test_max_rounds_ends_the_loop_with_the_shortfall_named():
    plan = plan_round({"g": GroupStatus(12, 40, 10)}, {"g": [0]}, round_no=4, max_rounds=3)
    assert plan.done and plan.unachievable["g"]["reason"] == "still 2 short after max_rounds=3"
    assert plan.unachievable["g"]["acceptance"] == pytest.approx(0.25)


def _ids(chosen, ids):
    return {i for i, c in zip(ids, chosen) if c}


def test_select_exactly_the_quota_by_rule():
    ids = [f"a{i}" for i in range(10)] + ["b0"]
    group = ["a"] * 10 + ["b"]
    clip = np.array([float(i % 5) for i in range(10)] + [1.0])
    order = np.arange(11)
    best, records = select(group, clip, order, 4, "best_clip")
    assert _ids(best, ids) == {"a4", "a9", "a3", "a8", "b0"}
    three, _ = select(group, clip, order, 3, "best_clip")
    assert _ids(three, ids) == {"a4", "a9", "a3", "b0"}  # a3 and a8 tie at 3.0: plan order breaks it
    assert records == [{"group": "a", "target": 4, "available": 10, "selected": 4},
                       {"group": "b", "target": 4, "available": 1, "selected": 1}]
    first, _ = select(group, clip, order, {"a": 3, "b": 0}, "plan_order")
    assert _ids(first, ids) == {"a0", "a1", "a2"}
    assert target_of("zzz", {"a": 3}) is None and target_of("zzz", {"a": 3, "*": 2}) == 2
    untargeted, _ = select(group, clip, order, {"a": 2}, "plan_order")
    assert _ids(untargeted, ids) == {"a0", "a1", "b0"}  # b has no quota: all of it is kept
    with pytest.raises(ValueError, match="unknown"):
        select(group, clip, order, 1, "random")


def test_stratified_selection_keeps_the_rebalanced_distribution():
    # 12 samples of one group: values 0 (8 of them, the best CLIP scores) and 1 (4); target 50/50
    stratum = np.array([0] * 8 + [1] * 4)
    clip = np.array([1.0] * 8 + [0.5] * 4)
    chosen, _ = select(["g"] * 12, clip, np.arange(12), 6, "best_clip", stratum, np.array([1.0, 1.0]))
    assert chosen.sum() == 6 and stratum[chosen].tolist().count(1) == 3
    # a value short of its share leaves its places to the other
    chosen, _ = select(["g"] * 12, clip, np.arange(12), 10, "best_clip", stratum, np.array([1.0, 1.0]))
    assert chosen.sum() == 10 and stratum[chosen].tolist().count(1) == 4
