"""The audit report's finding-QC section (radiology jobs): agreement per finding, a confusion matrix
per finding (the laterality one among them), and the samples QC rejected, from ``curation.json``
and the decisions table. Rejected images are not published, so they are listed with what was
stated and what the classifier read, not shown."""

from __future__ import annotations

from typing import Any

from pipelines.report.data import Dataset

MAX_REJECTED_SHOWN = 50


def qc_section(ds: Dataset) -> dict[str, Any]:
    qc = (ds.curation or {}).get("qc") if isinstance(ds.curation, dict) else None
    if not qc:
        return {"available": False, "note": "no finding QC in this job (curation.qc not set)"}
    out: dict[str, Any] = {"available": True, "classifier": qc.get("classifier"), "mode": qc.get("mode"),
                           "agreement": qc.get("agreement", {}), "confusion": _matrices(qc.get("confusion", {}))}
    rejected = []
    table = ds.decisions
    if table is not None and {"reasons", "qc_pred"} <= set(table.column_names):
        for row in table.select(["sample_id", "reasons", "qc_pred"]).to_pylist():
            why = [r for r in (row["reasons"] or []) if r.startswith("qc:")]
            if why:
                rejected.append({"sample_id": row["sample_id"], "reasons": why, "read": dict(row["qc_pred"] or [])})
    out["rejected_count"] = len(rejected)
    out["rejected"] = sorted(rejected, key=lambda r: r["sample_id"])[:MAX_REJECTED_SHOWN]
    return out


def _matrices(confusion: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict[str, Any]]:
    """Per finding: row labels (stated), column labels (read) and the counts as a dense matrix."""
    out = {}
    for key, rows in confusion.items():
        stated = sorted(rows)
        read = sorted({r for reads in rows.values() for r in reads})
        out[key] = {"stated": stated, "read": read,
                    "counts": [[rows[s].get(r, 0) for r in read] for s in stated]}
    return out
