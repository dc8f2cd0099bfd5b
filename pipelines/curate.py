"""Curation: one decision per sample, from the light columns of all staged units (no images).

The seam for DESIGN.md step 7. Today every sample is kept; dedup, safety, CLIP thresholds and
rebalancing add rows of reasons here, and publish honours ``kept``.
"""

from __future__ import annotations

import pyarrow as pa

DECISIONS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("prompt_id", pa.string()),
        ("kept", pa.bool_()),
        ("reasons", pa.list_(pa.string())),
        ("clip_score", pa.float32()),
    ]
)


def decide(light: pa.Table) -> pa.Table:
    """Decisions table in sample order (``light`` has LIGHT_COLUMNS of every sample)."""
    n = light.num_rows
    return pa.table(
        {
            "sample_id": light.column("sample_id"),
            "prompt_id": light.column("prompt_id"),
            "kept": pa.array([True] * n),
            "reasons": pa.array([[] for _ in range(n)], pa.list_(pa.string())),
            "clip_score": light.column("clip_score"),
        },
        schema=DECISIONS_SCHEMA,
    )
