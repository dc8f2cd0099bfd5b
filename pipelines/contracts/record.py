"""The per-sample provenance record (``schemas/sample_record.v1.schema.json``)."""

from __future__ import annotations

from typing import Any

from pipelines.generate.encode import DIGITAL_SOURCE_TYPE


def build_record(row: dict[str, Any], gen: dict[str, Any], clip: dict[str, Any], job: dict[str, str],
                 unit_id: str, embedding_ref: dict[str, Any], curation: dict[str, Any]) -> dict[str, Any]:
    """Deterministic: only what the job determines (no timings, hosts or wall-clock times)."""
    return {
        "schema_version": "1",
        "sample_id": row["sample_id"],
        "prompt_id": row["prompt_id"],
        "index": row["index"],
        "prompt": row["prompt"],
        "negative_prompt": row["negative_prompt"],
        "seed": row["seed"],
        "attributes": dict(row["attributes"] or []),
        "unit_id": unit_id,
        "generator": {
            "backend": gen["backend"],
            "model": gen["model"],
            "weights_sha256": gen["weights_sha256"],
            "pipeline_class": gen["pipeline_class"],
            "scheduler": gen["scheduler"],
            "scheduler_config_sha256": gen.get("scheduler_config_sha256"),
            "steps": row["steps"],
            "guidance_scale": row["guidance_scale"],
            "height": row["height"],
            "width": row["width"],
            "dtype": gen["dtype"],
            "device_type": gen["device_type"],
        },
        "clip": {
            "model": clip["model"],
            "weights_sha256": clip["weights_sha256"],
            "score": float(row["clip_score"]),
            "embedding": embedding_ref,
        },
        "image": {"format": "png", "width": row["width"], "height": row["height"],
                  "pixel_sha256": row["pixel_sha256"]},
        "curation": curation,
        "job": job,
        "ai_generated": {"digital_source_type": DIGITAL_SOURCE_TYPE},
    }
