"""Publish a job's staged units: shards, decisions, timings, provenance, card, then the index."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from tqdm import tqdm

from pipelines.publish import provenance
from pipelines.publish.card import render_card
from pipelines.curation.curate import summary_of
from pipelines.publish.shards import ShardWriter, write_index, write_json, write_parquet
from pipelines.contracts.record import build_record
from pipelines.contracts.unit import Staging, meta
from pipelines.io.store import Store

if TYPE_CHECKING:
    from pipelines.execution.runner import Prepared


def publish_dataset(store: Store, prep: "Prepared", staging: Staging, decisions: pa.Table,
                    stage_seconds: dict[str, float], started: float, quiet: bool = False) -> dict[str, int]:
    spec = prep.spec
    job = {"name": spec.name, "fingerprint": prep.dataset_fingerprint}
    # No index exists at this point, so whatever is under shards/ is not a dataset: start clean.
    store.delete_prefix("shards")
    store.delete_prefix("embeddings")
    by_id = {d["sample_id"]: d for d in decisions.to_pylist()}
    writer = ShardWriter(store, spec.name, list(spec.output.formats), spec.output.shard_max_samples,
                         spec.output.shard_max_bytes)
    timings: list[dict[str, Any]] = []
    gen_info = clip_info = None
    for unit in tqdm(prep.units, desc="publish", unit="unit", disable=quiet):
        table = staging.read_unit(unit.unit_id)
        gen_info, clip_info = meta(table, "synthgen.generator"), meta(table, "synthgen.clip")
        for row in table.to_pylist():
            timings.append({"sample_id": row["sample_id"], "unit_id": unit.unit_id, "gen_ms": row["gen_ms"],
                            "clip_ms": row["clip_ms"], "gen_worker": row["gen_worker"]})
            d = by_id[row["sample_id"]]
            if not d["kept"]:
                continue
            rec = build_record(row, gen_info, clip_info, job, unit.unit_id, writer.embedding_ref(),
                               {"kept": True, "reasons": d["reasons"], "flags": d.get("flags") or []})
            writer.add(row["sample_id"], row["png"], row["prompt"], rec, row["image_emb"], row["text_emb"])
    writer.flush()

    kept = sum(1 for d in by_id.values() if d["kept"])
    reasons = Counter(r for d in by_id.values() for r in d["reasons"] if not d["kept"])
    counts = {"planned": len(prep.samples), "kept": kept, "rejected": len(prep.samples) - kept,
              "shards": len(writer.shards), "prompts": prep.manifest.num_rows}
    files = {
        "manifest.parquet": write_parquet(store, "manifest.parquet", prep.manifest),
        "decisions.parquet": write_parquet(store, "decisions.parquet", decisions.replace_schema_metadata(None)),
        "timings.parquet": write_parquet(store, "timings.parquet", pa.Table.from_pylist(timings)),
    }
    curation = summary_of(decisions)  # per-stage counts, dedup, references, safety, bias audits
    if curation is not None:
        files["curation.json"] = write_json(store, "curation.json", curation)
    job_spec = spec.published_dump()  # model and file paths as the job spec wrote them, not as resolved here
    job_spec["output"]["storage_options"] = provenance.redact(spec.output.storage_options)
    if job_spec["manifest"].get("storage_options"):
        job_spec["manifest"]["storage_options"] = provenance.redact(job_spec["manifest"]["storage_options"])
    files["provenance.json"] = write_json(store, "provenance.json", {
        "job": job, "job_spec": job_spec, "code_version": provenance.code_version(),
        "manifest": {"sha256_content": prep.manifest_hash, "source": spec.as_written("manifest.path") or "template",
                     "rows": prep.manifest.num_rows},
        "models": {
            "generator": {**(gen_info or {}), "files": dict(provenance.weight_files(spec.generator.model))},
            "clip": {**(clip_info or {}), "files": dict(provenance.weight_files(spec.clip.pretrained or ""))},
        },
        "libraries": provenance.library_versions(), "host": provenance.host(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stage_seconds": stage_seconds, "counts": counts, "rejections": dict(reasons),
    })
    card = render_card(job=job, description=spec.description, counts=counts, gen=gen_info or {},
                       clip=clip_info or {}, code_version=provenance.code_version(), url=store.url.rstrip("/"),
                       reasons=sorted(reasons.items()))
    store.write_bytes("README.md", card.encode())
    files["README.md"] = {"sha256": __import__("hashlib").sha256(card.encode()).hexdigest(), "bytes": len(card)}
    from pipelines.report.build import publish_report  # audit report of what is published so far, before the index

    files.update(publish_report(store, {"job": job, "counts": counts, "shards": writer.shards, "files": files}))
    write_index(store, job=job, shards=writer.shards, files=files, counts=counts)
    return counts
