"""Publish a job: the metadata around the shards and decisions the workers wrote, then the index."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from pipelines.contracts.decisions import DECISIONS, DECISIONS_SCHEMA, TIMINGS
from pipelines.io.store import Store
from pipelines.publish import croissant, provenance
from pipelines.publish.card import render_card
from pipelines.publish.label import Labeller
from pipelines.publish.shards import write_index, write_json, write_parquet

if TYPE_CHECKING:
    from pipelines.execution.curate_plan import Curated
    from pipelines.execution.runner import Prepared


OUTPUT_PREFIXES = ("shards", "embeddings", "dicom", DECISIONS, TIMINGS)


def clear_outputs(store: Store) -> None:
    """No index exists at this point, so whatever is under the dataset's prefixes is not a dataset: start
    clean (a decisions or timings file of an older layout included)."""
    for prefix in OUTPUT_PREFIXES:
        store.delete_prefix(prefix)  # a folder of parts, or one file of that name


def publish_dataset(store: Store, prep: "Prepared", curated: "Curated", shards: list[dict[str, Any]],
                    gen_info: dict[str, Any] | None, clip_info: dict[str, Any] | None,
                    stage_seconds: dict[str, float], started: float) -> dict[str, int]:
    """Everything but the shards (written by workers, their index entries in ``shards``), index last."""
    spec = prep.spec
    job = job_of(prep)
    label = labeller(prep)
    kept = curated.kept
    reasons = curated.rejections
    failed = sum(v for k, v in reasons.items() if k.startswith("generation_failed"))
    counts = {"planned": prep.planned, "kept": kept, "rejected": prep.planned - kept,
              "shards": len(shards), "prompts": prep.manifest.num_rows, "failed": failed}
    files = {
        "manifest.parquet": write_parquet(store, "manifest.parquet", prep.manifest),
        **curated.files,
    }
    curation = curated.summary  # per-stage counts, dedup, references, safety, bias audits
    if curation is not None:
        files["curation.json"] = write_json(store, "curation.json", curation)
    job_spec = spec.published_dump()  # model and file paths as the job spec wrote them, not as resolved here
    job_spec["output"]["storage_options"] = provenance.redact(spec.output.storage_options)
    if job_spec["manifest"].get("storage_options"):
        job_spec["manifest"]["storage_options"] = provenance.redact(job_spec["manifest"]["storage_options"])
    job_spec["provenance"]["c2pa"].pop("key", None)  # where the signing key lives is not recorded
    files["provenance.json"] = write_json(store, "provenance.json", {
        "job": job, "job_spec": job_spec, "code_version": provenance.code_version(),
        "manifest": {"sha256_content": prep.manifest_hash, "source": spec.as_written("manifest.path") or "template",
                     "rows": prep.manifest.num_rows},
        "models": {
            "generator": {**(gen_info or {}), "files": dict(provenance.weight_files(spec.generator.model))},
            "clip": {**(clip_info or {}), "files": dict(provenance.weight_files(spec.clip.pretrained or ""))},
        },
        "libraries": provenance.library_versions(), "host": provenance.host(), "labels": label.describe(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stage_seconds": stage_seconds, "counts": counts, "rejections": dict(reasons),
    })
    card = render_card(job=job, description=spec.description, counts=counts, gen=gen_info or {},
                       clip=clip_info or {}, code_version=provenance.code_version(), url=store.url.rstrip("/"),
                       reasons=sorted(reasons.items()))
    store.write_bytes("README.md", card.encode())
    files["README.md"] = {"sha256": hashlib.sha256(card.encode()).hexdigest(), "bytes": len(card)}
    from pipelines.report.build import publish_report  # audit report of what is published so far, before the index

    files.update(publish_report(store, {"job": job, "counts": counts, "shards": shards, "files": files}))
    # croissant globs the decisions parts (decisions.parquet/*.parquet) and the shards: no digests in it
    files[croissant.CROISSANT] = croissant.publish(store, spec, prep.dataset_fingerprint, counts, gen_info or {},
                                                   clip_info or {}, DECISIONS_SCHEMA.empty_table(), files, curation,
                                                   label)
    write_index(store, job=job, shards=shards, files=files, counts=counts)
    return counts


def labeller(prep: "Prepared") -> Labeller:
    """Marks every published image where its shard is written (pickles to the shard tasks)."""
    return Labeller.for_job(prep.spec, prep.dataset_fingerprint)


def job_of(prep: "Prepared") -> dict[str, str]:
    return {"name": prep.spec.name, "fingerprint": prep.dataset_fingerprint}
