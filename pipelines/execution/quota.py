"""The quota loop's state between curation passes (DESIGN step 8): which rows get how many more samples.

The maths is ``pipelines/curation/targets.py``; this keeps the per-row sample totals (O(rows), never
O(samples)), stages each round's table beside the manifest and hands its units to the runner. Every
round is a pure function of the rounds before it, so a resumed or repeated job plans the same rounds
and finds their units staged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.contracts.decisions import parquet_bytes
from pipelines.contracts.unit import Staging
from pipelines.curation import targets
from pipelines.plan import rounds
from pipelines.plan.samples import UnitRange

if TYPE_CHECKING:
    from pipelines.config import JobSpec
    from pipelines.execution.curate_plan import Curated
    from pipelines.execution.runner import Prepared


class QuotaLoop:
    def __init__(self, spec: "JobSpec", prep: "Prepared"):
        assert spec.curation.targets is not None
        self.spec, self.prep, self.tg = spec, prep, spec.curation.targets
        self.totals = prep.manifest.column("num_images").to_numpy().astype(np.int64)
        self.round = 0
        self.rounds_of: dict[str, int] = {g: 1 for g in prep.quota_rows}  # rounds in which a group generated
        self.short: list[str] = []
        self.group_of = {r: g for g, rows in prep.quota_rows.items() for r in rows}  # row -> its group
        self.last: targets.RoundPlan | None = None

    def status(self, curated: "Curated") -> dict[str, targets.GroupStatus]:
        """Targeted groups: the manifest's groups (and any the per_group map names) with their counts so far;
        "kept" counts the quota's surplus too (kept by every other stage)."""
        names = set(self.prep.quota_rows) | set(curated.groups)
        if isinstance(self.tg.per_group, dict):
            names |= {g for g in self.tg.per_group if g != "*"}
        out = {}
        for g in sorted(names):
            target = targets.target_of(g, self.tg.per_group)
            if target is None:
                continue
            c = curated.groups.get(g, {"generated": 0, "kept": 0, "rejected": {}})
            out[g] = targets.GroupStatus(target, c["generated"], c["kept"] + c["rejected"].get("quota", 0))
        return out

    def next_round(self, curated: "Curated", staging: Staging) -> list[UnitRange]:
        """The next round's units (its table staged), or [] when every group is met or settled."""
        plan = targets.plan_round(self.status(curated), self.prep.quota_rows, self.round + 1, self.tg.max_rounds,
                                  self.tg.overshoot, self.tg.min_tries, self.tg.max_per_round)
        self.last = plan
        if plan.done:
            return []
        self.round += 1
        table = rounds.round_table(self.prep.manifest, plan.extra, self.totals)
        name, units = rounds.round_units(table, self.round, self.spec.generator, self.spec.unit_size)
        key = f"{staging.prefix}/{name}"
        if not staging.store.exists(key):  # content-named: an existing one holds the same rows
            staging.store.write_bytes(key, parquet_bytes(table))
        for r, n in plan.extra.items():
            self.totals[r] += n
        self.short = sorted({self.group_of[r] for r in plan.extra})
        for g in self.short:
            self.rounds_of[g] = self.rounds_of.get(g, 1) + 1
        self.prep.rounds.append({"round": self.round, "samples": int(sum(plan.extra.values())),
                                 "rows": len(plan.extra), "groups": self.short, "table": name})
        return units

    def summary(self, curated: "Curated") -> dict[str, Any]:
        """``curation.json``'s ``targets`` entry: per group its quota, what it cost and how it ended."""
        return targets.summary(self.status(curated), curated.groups, self.last or targets.RoundPlan(),
                               self.rounds_of, self.prep.rounds, self.tg.model_dump())
