"""Curation: one decision per sample, from the light columns of all staged units (no images).

The seam for DESIGN.md step 7. Today every sample is kept; dedup, safety, CLIP thresholds and
rebalancing add rows of reasons here, and publish honours ``kept``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from .config import JobSpec

DECISIONS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("prompt_id", pa.string()),
        ("kept", pa.bool_()),
        ("reasons", pa.list_(pa.string())),
        ("clip_score", pa.float32()),
    ]
)


def decide(light: pa.Table, spec: "JobSpec", screened: list[dict[str, Any]]) -> pa.Table:
    """Decisions table: generated samples in sample order (``light`` has LIGHT_COLUMNS of each),
    then the prompt-screened ones (never generated, so no scores)."""
    n = light.num_rows
    generated = pa.table(
        {
            "sample_id": light.column("sample_id"),
            "prompt_id": light.column("prompt_id"),
            "kept": pa.array([True] * n),
            "reasons": pa.array([[] for _ in range(n)], pa.list_(pa.string())),
            "clip_score": light.column("clip_score"),
        },
        schema=DECISIONS_SCHEMA,
    )
    rows = [{"sample_id": r["sample_id"], "prompt_id": r["prompt_id"], "kept": False, "reasons": r["reasons"],
             "clip_score": None} for r in screened]
    return pa.concat_tables([generated, pa.Table.from_pylist(rows, schema=DECISIONS_SCHEMA)])
