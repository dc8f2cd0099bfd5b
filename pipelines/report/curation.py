"""The audit report's curation section: how each curation filter shifted attribute distributions, from
``curation.json``. The layout curation writes (``stages``: survivors after each filter with their bias
audit) is read exactly; any other layout is searched for ``{before, after}`` pairs so older or foreign
curation outputs still show what they hold."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pipelines.report.data import Dataset


def _find_before_after(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    found = []
    if isinstance(obj, dict):
        if "before" in obj and "after" in obj:
            name = obj.get("name") or obj.get("filter") or "/".join(path) or "curation"
            found.append((str(name), obj["before"], obj["after"]))
        for k, v in obj.items():
            if k not in ("before", "after"):
                found += _find_before_after(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _find_before_after(v, path + (str(i),))
    return found


def _shares(dist: Any) -> dict[str, float] | None:
    """{value: count | share | {share|p|count: x}} -> shares summing to 1."""
    if not isinstance(dist, dict) or not dist:
        return None
    vals = {}
    for k, v in dist.items():
        if isinstance(v, dict):
            v = next((v[x] for x in ("count", "n", "share", "p", "prob", "fraction") if x in v), None)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return None
        vals[str(k)] = float(v)
    tot = sum(vals.values())
    return {k: v / tot for k, v in sorted(vals.items())} if tot > 0 else None


def _before_after(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, dict[str, float]]:
    """Per value (sorted): its share before and after (0 where a side lacks it)."""
    b, a = before or {}, after or {}
    return {v: {"before": b.get(v, 0.0), "after": a.get(v, 0.0)} for v in sorted(set(b) | set(a))}


def _audit_totals(audit: list[Any]) -> dict[str, dict[str, float]]:
    """Counts per attribute value summed over the groups of one bias-audit list (curation.json)."""
    tot: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in audit:
        if not isinstance(e, dict) or not isinstance(e.get("values"), list) or not isinstance(e.get("counts"), list):
            continue
        for v, c in zip(e["values"], e["counts"]):
            tot[str(e.get("attribute"))][str(v)] += float(c or 0)
    return {a: dict(d) for a, d in sorted(tot.items())}


def _curation_from_stages(cur: dict[str, Any]) -> dict[str, Any]:
    """curation.json with ``stages`` (survivors after each filter, each with its bias audit)."""
    stages = [st for st in cur["stages"] if isinstance(st, dict)]
    out: dict[str, Any] = {"stages": [{k: st.get(k) for k in ("stage", "remaining", "removed")} for st in stages]}
    audited = [st for st in stages if isinstance(st.get("audit"), list)]
    filters = []
    for prev, now in zip(audited, audited[1:]):
        b, a = _audit_totals(prev["audit"]), _audit_totals(now["audit"])
        rows = {attr: _before_after(_shares(b.get(attr) or {}), _shares(a.get(attr) or {}))
                for attr in sorted(set(b) | set(a))}
        filters.append({"filter": now.get("stage"), "before_stage": prev.get("stage"), "removed": now.get("removed"),
                        "attributes": rows})
    out["filters"] = filters
    if len(audited) >= 2:  # per group: generated vs final survivors, with the curation's own intervals
        first = {(e.get("group"), e.get("attribute")): e for e in audited[0]["audit"] if isinstance(e, dict)}
        per_group: dict[str, dict[str, Any]] = defaultdict(dict)
        for e in audited[-1]["audit"]:
            if not isinstance(e, dict) or (e.get("group"), e.get("attribute")) not in first:
                continue
            b = first[(e.get("group"), e.get("attribute"))]
            per_group[str(e.get("group"))][str(e.get("attribute"))] = {
                "values": e.get("values"), "before": {"n": b.get("n"), "p": b.get("p"), "p_ci": b.get("p_ci")},
                "after": {"n": e.get("n"), "p": e.get("p"), "p_ci": e.get("p_ci")},
                "after_stage": audited[-1].get("stage")}
        out["per_group"] = dict(sorted(per_group.items()))
    for key in ("counts", "reasons", "flags", "dedup", "rebalance", "bias"):
        if key in cur:
            out[key] = cur[key]
    return out


def curation_section(ds: Dataset) -> dict[str, Any]:
    cur = ds.curation
    if cur is None:
        return {"available": False, "note": "curation.json absent (curation wrote no per-filter distributions)"}
    if isinstance(cur, dict) and isinstance(cur.get("stages"), list):
        out = {"available": True, **_curation_from_stages(cur)}
        if not out["filters"]:
            out["note"] = ("no bias audit in curation.json (curation.bias.attributes not configured): per-filter "
                           "attribute distributions are not available, only the counts per stage")
        return out
    entries = []  # any other layout: every {before, after} pair found anywhere
    for name, before, after in _find_before_after(cur):
        attrs = sorted(set(before) | set(after)) if isinstance(before, dict) and isinstance(after, dict) else []
        rows = {}
        for a in attrs:
            b, f = _shares(before.get(a)), _shares(after.get(a))
            if b is None and f is None:
                continue
            rows[a] = _before_after(b, f)
        if not rows:  # before/after are flat distributions of one attribute
            b, f = _shares(before), _shares(after)
            if b is not None or f is not None:
                rows["value"] = _before_after(b, f)
        entries.append({"filter": name, "attributes": rows})
    return {"available": True, "filters": entries,
            "note": "" if entries else "curation.json has no before/after distributions the report understands"}
