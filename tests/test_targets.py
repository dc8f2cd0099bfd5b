"""Quota planning: round sizing from acceptance, unachievable groups, exact selection."""

from __future__ import annotations

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


def test_select_exactly_the_quota_by_rule():
    kept = [(f"a{i}", "a", float(i % 5), (0, 0, i)) for i in range(10)] + [("b0", "b", 1.0, (0, 1, 0))]
    best = select(kept, 4, "best_clip")
    assert {k for k in best if k.startswith("a")} == {"a4", "a9", "a3", "a8"} and "b0" in best
    first = select(kept, {"a": 3, "b": 0}, "plan_order")
    assert first == {"a0", "a1", "a2"}
    assert target_of("zzz", {"a": 3}) == 0
    with pytest.raises(ValueError, match="unknown"):
        select(kept, 1, "random")
