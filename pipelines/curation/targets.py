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

import numpy as np

from pipelines.curation.shuffle import concat, group_buckets, per_block, split

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


def target_of(group: str, per_group: int | Mapping[str, int]) -> int | None:
    """The quota of one group: the single number, or the map's entry (``*``: any group not named); None
    for a group the map does not cover (not targeted: its kept samples are all published, no rounds)."""
    if isinstance(per_group, int):
        return per_group
    value = per_group.get(group, per_group.get("*"))
    return None if value is None else int(value)


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


def summary(status: Mapping[str, GroupStatus], groups: Mapping[str, Mapping[str, Any]], final: RoundPlan,
            rounds_of: Mapping[str, int], rounds: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]
            ) -> dict[str, Any]:
    """Per group: its quota, samples generated over all rounds, kept by every stage before the quota
    (acceptance = kept / generated), published, generated per published image (the quota's cost),
    rejections by the stage that decided them, rounds it took part in, and how it ended (``met``,
    ``unachievable`` with the reason, or ``untargeted``)."""
    out = []
    for g in sorted(set(groups) | set(status)):
        c = groups.get(g, {"generated": 0, "kept": 0, "rejected": {}})
        st = status.get(g)
        available = c["kept"] + c["rejected"].get("quota", 0)
        entry: dict[str, Any] = {
            "group": g, "target": st.target if st else None, "generated": c["generated"], "kept": available,
            "published": c["kept"], "acceptance": available / c["generated"] if c["generated"] else None,
            "cost": c["generated"] / c["kept"] if c["kept"] else None, "rounds": rounds_of.get(g, 1),
            "rejected": dict(sorted(c["rejected"].items()))}
        if st is None:
            entry["status"] = "untargeted"
        elif g in final.unachievable:
            entry |= {"status": "unachievable", "reason": final.unachievable[g]["reason"]}
        else:
            entry["status"] = "met" if c["kept"] >= st.target else "short"
        out.append(entry)
    generated, published = sum(e["generated"] for e in out), sum(e["published"] for e in out)
    return {"settings": dict(settings), "rounds": [dict(r) for r in rounds], "groups": out,
            "met": sum(e["status"] == "met" for e in out),
            "unachievable": sum(e["status"] == "unachievable" for e in out),
            "generated": generated, "published": published,
            "cost": generated / published if published else None}


def select(group: Sequence[str], clip: np.ndarray, order: np.ndarray, per_group: int | Mapping[str, int],
           rule: str, stratum: np.ndarray | None = None, weights: np.ndarray | None = None
           ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(chosen mask, per-group records): exactly the quota per group from the kept samples given.

    ``best_clip``: highest CLIPScore first (ties by plan order); ``plan_order``: the earliest planned
    (round, row, index: ``order``). A group short of its quota keeps everything it has; an untargeted
    group keeps everything. With ``stratum``/``weights`` (a rebalanced attribute: each sample's value and
    the target distribution), the quota is apportioned over the values by largest remainder first, so
    the selection keeps the rebalanced distribution (a value short of its share leaves its place to the
    others)."""
    if rule not in ("best_clip", "plan_order"):
        raise ValueError(f"unknown targets.select rule '{rule}'")
    n = len(group)
    chosen = np.zeros(n, bool)
    g = np.asarray(group, dtype=object)
    records = []
    for name in sorted(set(group)):
        idx = np.flatnonzero(g == name)
        target = target_of(name, per_group)
        if target is None:
            chosen[idx] = True
            continue
        rank = idx[np.lexsort((order[idx], -clip[idx]))] if rule == "best_clip" else idx[np.argsort(order[idx],
                                                                                                    kind="stable")]
        if stratum is not None and weights is not None:
            pick = _stratified(rank, stratum, weights, target)
        else:
            pick = rank[:target]
        chosen[pick] = True
        records.append({"group": name, "target": target, "available": int(len(idx)), "selected": int(len(pick))})
    return chosen, records


def _stratified(rank: np.ndarray, stratum: np.ndarray, weights: np.ndarray, target: int) -> np.ndarray:
    """``target`` of the ranked samples with values in proportion to ``weights`` (largest remainder),
    filling any value's shortfall from the best remaining samples of the others."""
    w = np.asarray(weights, np.float64) / np.sum(weights)
    share = w * target
    quota = np.floor(share).astype(np.int64)
    for v in np.argsort(-(share - quota), kind="stable")[: target - int(quota.sum())]:
        quota[v] += 1
    picked: list[int] = []
    for v in range(len(w)):
        picked += rank[stratum[rank] == v][: quota[v]].tolist()
    taken = set(picked)
    picked += [i for i in rank.tolist() if i not in taken][: max(target - len(picked), 0)]
    pos = {i: k for k, i in enumerate(rank.tolist())}
    return np.array(sorted(picked, key=pos.__getitem__), np.int64)


# ------------------------------------------------------------- the quota stage over partitions
def quota_map(block: Any, p: int, attribute: str | None = None) -> list[dict[str, Any]]:
    """A block's survivors of every earlier stage, bucketed by group hash (a group meets in one reduce)."""
    rows = np.flatnonzero(block.st.alive("rebalance"))
    labels = block.perceived[0][attribute][rows] if attribute and block.perceived else np.zeros(len(rows), np.int64)
    part = {"gidx": block.gidx[rows], "clip": block.st.clip[rows], "group": [block.qgroup[i] for i in rows],
            "stratum": labels}
    return split(part, group_buckets(part["group"], p), p)


def quota_reduce(per_group: int | Mapping[str, int], rule: str, weights: np.ndarray | None, bounds: np.ndarray,
                 *parts: dict[str, Any]) -> list[Any]:
    """[per-group records, then per block: the surplus samples' global indices]."""
    r = concat(parts)
    gidx = np.asarray(r["gidx"], np.int64)
    chosen, records = select(list(r["group"]), np.asarray(r["clip"], np.float64), gidx, per_group, rule,
                             np.asarray(r["stratum"], np.int64) if weights is not None else None, weights)
    return [records, *per_block(bounds, gidx[~chosen])]

