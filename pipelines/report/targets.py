"""The audit report's quota section: per group its target, what was published, the samples generated
for it over all rounds, acceptance (kept by every stage before the quota / generated), the quota's cost
(generated per published image), rejections by the stage that decided them, and how the group ended;
from ``curation.json``'s ``targets`` entry (``pipelines/curation/targets.py``: ``summary``)."""

from __future__ import annotations

from typing import Any

from pipelines.report.data import Dataset


def quota_section(ds: Dataset) -> dict[str, Any]:
    t = (ds.curation or {}).get("targets") if isinstance(ds.curation, dict) else None
    if not t:
        return {"available": False, "note": "no quota in this job (curation.targets not set)"}
    stages = sorted({s for g in t["groups"] for s in g.get("rejected", {})})
    return {"available": True, "settings": t.get("settings", {}), "rounds": t.get("rounds", []),
            "met": t.get("met"), "unachievable": t.get("unachievable"), "generated": t.get("generated"),
            "published": t.get("published"), "cost": t.get("cost"), "stages": stages,
            "groups": [{**g, "rejected_by": [g.get("rejected", {}).get(s, 0) for s in stages]} for g in t["groups"]]}
