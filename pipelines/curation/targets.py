"""Quotas: generate until every group has its target of kept samples (DESIGN step 8).

Pure planning, no I/O: after a round is curated, ``plan_round`` sizes the next round per group from
the group's observed acceptance (kept / generated), spreads the extra samples over the group's
manifest rows, and declares a group unachievable when it cannot be met; ``select`` then picks
exactly the quota per group from the kept samples. The runner stages each round's samples as
ordinary work units, so rounds resume and reproduce like round 0.

Extra samples continue each row's sample index (``num_images``, ``num_images + 1``, ...), so ids and
seeds never collide with earlier rounds and a round is a pure function of the rounds before it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# A group whose acceptance stays below this after `min_tries` generated samples is declared
# unachievable rather than looped on until max_rounds (the model cannot draw it, or its prompts
# cannot produce it).
MIN_ACCEPTANCE = 0.02


@dataclass(frozen=True)
class GroupStatus:
    """One group after a round: samples generated so far (all rounds), kept so far, and the target."""

    target: int
    generated: int
    kept: int

    @property
    def acceptance(self) -> float | None:
        return self.kept / self.generated if self.generated else None

    @property
    def short(self) -> int:
        return max(self.target - self.kept, 0)


@dataclass
class RoundPlan:
    """What the next round generates (row index -> extra samples) and what is settled."""

    extra: dict[int, int] = field(default_factory=dict)
    met: list[str] = field(default_factory=list)
    unachievable: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return not self.extra


def target_of(group: str, per_group: int | Mapping[str, int]) -> int:
    """The quota of one group: the single number, or the map's entry (0 for a group it does not name)."""
    return int(per_group) if isinstance(per_group, int) else int(per_group.get(group, 0))


def plan_round(status: Mapping[str, GroupStatus], rows_by_group: Mapping[str, Sequence[int]], round_no: int,
               max_rounds: int, overshoot: float = 1.25, min_tries: int = 16,
               max_per_round: int | None = None) -> RoundPlan:
    """Size round ``round_no`` (1-based: round 0 is the manifest itself).

    Per short group: ``ceil(short / acceptance * overshoot)`` new samples (acceptance from all rounds so
    far; a group with no kept sample yet but fewer than ``min_tries`` tries gets ``min_tries``), spread
    round-robin over the group's rows in manifest order. A group whose acceptance is below
    ``MIN_ACCEPTANCE`` after ``min_tries`` tries, or that is still short when ``max_rounds`` is reached, is
    declared unachievable with its acceptance and the reason."""
    plan = RoundPlan()
    for group in sorted(status):
        st = status[group]
        if st.short == 0:
            plan.met.append(group)
            continue
        acc = st.acceptance
        if st.generated >= min_tries and (acc or 0.0) < MIN_ACCEPTANCE:
            plan.unachievable[group] = {"reason": f"acceptance {acc or 0.0:.3f} below {MIN_ACCEPTANCE} after "
                                        f"{st.generated} generated", **_figures(st)}
            continue
        if round_no > max_rounds:
            plan.unachievable[group] = {"reason": f"still {st.short} short after max_rounds={max_rounds}",
                                        **_figures(st)}
            continue
        rows = list(rows_by_group.get(group, ()))
        if not rows:
            plan.unachievable[group] = {"reason": "no manifest row belongs to this group", **_figures(st)}
            continue
        if acc:
            n = math.ceil(st.short / acc * overshoot)
        else:
            n = max(min_tries - st.generated, st.short)
        if max_per_round is not None:
            n = min(n, max_per_round)
        for k in range(n):
            row = rows[k % len(rows)]
            plan.extra[row] = plan.extra.get(row, 0) + 1
    return plan


def _figures(st: GroupStatus) -> dict[str, Any]:
    return {"target": st.target, "kept": st.kept, "generated": st.generated, "acceptance": st.acceptance}


def select(kept: Sequence[tuple[str, str, float, tuple[int, ...]]], per_group: int | Mapping[str, int],
           rule: str) -> set[str]:
    """Exactly the quota per group from ``(sample_id, group, clip_score, plan_order)`` of kept samples.

    ``best_clip``: highest CLIP score first (ties by plan order); ``plan_order``: the earliest planned
    (round, row, index). A group short of its quota keeps everything it has."""
    by_group: dict[str, list[tuple[str, str, float, tuple[int, ...]]]] = {}
    for item in kept:
        by_group.setdefault(item[1], []).append(item)
    chosen: set[str] = set()
    for group, items in by_group.items():
        if rule == "best_clip":
            items = sorted(items, key=lambda t: (-t[2], t[3]))
        elif rule == "plan_order":
            items = sorted(items, key=lambda t: t[3])
        else:
            raise ValueError(f"unknown targets.select rule '{rule}'")
        chosen.update(t[0] for t in items[: target_of(group, per_group)])
    return chosen
