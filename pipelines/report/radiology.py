"""The audit report's finding-QC section (radiology jobs): agreement per finding, a confusion matrix
per finding (the laterality one among them), and the samples QC rejected, from ``curation.json``
and the decisions table (counted in its one streamed pass, :mod:`pipelines.report.decisions`).
Rejected images are not published, so they are listed with what was stated and what the classifier
read, not shown."""

from __future__ import annotations

from typing import Any

from pipelines.report.data import Dataset
from pipelines.report.decisions import DecisionStats


def qc_section(ds: Dataset, dec: DecisionStats | None) -> dict[str, Any]:
    qc = (ds.curation or {}).get("qc") if isinstance(ds.curation, dict) else None
    if not qc:
        return {"available": False, "note": "no finding QC in this job (curation.qc not set)"}
    out: dict[str, Any] = {"available": True, "classifier": qc.get("classifier"), "mode": qc.get("mode"),
                           "agreement": qc.get("agreement", {}), "confusion": _matrices(qc.get("confusion", {}))}
    out["rejected_count"] = dec.qc_rejected if dec is not None else 0
    out["rejected"] = dec.qc_first.items() if dec is not None else []  # the first MAX_REJECTED_SHOWN by sample id
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
