"""Curation and publishing on the cluster equal the single-process path on the same staged units.

Synthetic staged units (real Parquet in the staging layout, planted exact / perceptual / semantic
duplicates, failed samples) are curated by ``single.decide`` over the concatenated light columns
(what the driver did before) and by ``curate_units`` split into one-unit blocks and three buckets,
inline and as Ray tasks: the decisions rows and the summary must be equal, the decisions and timings
parts listed, and the shards written by tasks byte-identical to one process rolling them.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from benchmarks.bench_curation import stage_synthetic
from pipelines.config import JobSpec
from pipelines.contracts.decisions import DECISIONS, TIMINGS, parts
from pipelines.contracts.record import build_record
from pipelines.contracts.unit import LIGHT_COLUMNS, Staging, meta
from pipelines.curation import curate, single
from pipelines.curation.context import build_context
from pipelines.execution.curate_plan import Executor, Where, curate_units
from pipelines.execution.publish_plan import write_shards
from pipelines.publish.shards import ShardWriter, plan_shards

from .conftest import job_dict

CURATION = {
    "dedup": {"exact": True, "perceptual": {"enabled": True, "max_distance": 3},
              "semantic": {"enabled": True, "eps": 0.01, "cluster_size": 60, "spill": 0.1}, "keep": "best_clip"},
    "min_clip_score": 1.0,
    "safety": {"mode": "report", "concepts": [{"name": "red", "prompts": ["a red shape"], "threshold": 0.2}]},
    "bias": {"attributes": {"colour": {"red": "a red shape", "blue": "a blue shape"}}, "group_by": ["shape"],
             "bootstrap": 50},
    "rebalance": {"attribute": "colour", "target": "uniform"},
}
N, UNIT = 420, 32


@pytest.fixture(scope="module")
def staged(tiny_models, tmp_path_factory):
    from pipelines.embed.clip import ClipEmbedder

    out = tmp_path_factory.mktemp("cluster_cur") / "out"
    d = job_dict(tiny_models, str(out), curation=CURATION,
                 output={"url": str(out), "shard_max_samples": 50, "shard_max_bytes": 20_000})
    spec = JobSpec.model_validate(d)
    dim = ClipEmbedder(spec.clip).text_embeddings(["a"]).shape[1]
    units = stage_synthetic(str(out), "fp", N, UNIT, dim, seed=3, failed_every=97)
    staging = Staging(spec.output.store(), "fp")
    light = pa.concat_tables([staging.read_unit(u, LIGHT_COLUMNS) for u in units])
    screened = [{"sample_id": "s/0", "prompt_id": "s", "reasons": ["prompt_screen:term:x"]}]
    # the context as the cluster builds it (text embeddings at the embed actors' thread count)
    ctx = build_context(spec.curation, spec.clip, True, spec.resources.embed.torch_threads)
    reference = single.decide(light.filter(pc.is_null(light.column("error"))), spec, screened, ctx)
    failed = light.filter(pc.is_valid(light.column("error")))
    reference = pa.concat_tables([reference, curate.failed_table(failed.to_pylist())])
    return spec, staging, units, screened, reference


def _check(staged, ex: Executor):
    spec, staging, units, screened, reference = staged
    cur = curate_units(spec, units, staging, screened, executor=ex, block_units=1, buckets=3)
    keys = parts({"files": cur.files}, DECISIONS)
    assert len(keys) > 3 and len(parts({"files": cur.files}, TIMINGS)) == len(units)
    root = staging.store.root
    got = pq.read_table(f"{root}/{DECISIONS}")  # the parts read back as one dataset, in row order
    assert json.dumps(got.to_pylist()) == json.dumps(reference.to_pylist())  # NaN == NaN here
    want = curate.summary_of(reference)
    assert cur.summary == want
    stages = {s["stage"]: s for s in want["stages"]}
    assert want["dedup"]["exact"]["removed"] and want["dedup"]["perceptual"]["removed"]
    assert want["dedup"]["semantic"]["clusters"] > 1 and want["dedup"]["semantic"]["guests"]
    assert stages["rebalance"]["removed"] and cur.rejections["generation_failed: RuntimeError: planted"] == 4
    return cur


def test_partitioned_curation_inline_equals_decide(staged):
    _check(staged, Executor(False))


def test_curation_and_shards_as_ray_tasks_equal_one_process(staged, ray_cluster):
    spec, staging, units, _, reference = staged
    cur = _check(staged, Executor(True))
    job = {"name": spec.name, "fingerprint": "f"}
    shards, gen, clip = write_shards(spec, cur, Where(spec.output.model_dump(), "fp"), job, units[-1])
    assert gen["backend"] == "synthetic" and clip["model"] == "none"
    # one process rolling the kept rows through ShardWriter, as publishing did before
    writer = ShardWriter(staging.store, "expected", list(spec.output.formats), spec.output.shard_max_samples,
                         spec.output.shard_max_bytes)
    kept = {r["sample_id"]: r["flags"] for r in reference.to_pylist() if r["kept"]}
    for u in units:
        t = staging.read_unit(u)
        for row in t.to_pylist():
            if row["sample_id"] in kept:
                rec = build_record(row, meta(t, "synthgen.generator"), meta(t, "synthgen.clip"), job, u,
                                   writer.embedding_ref(), {"kept": True, "reasons": [], "flags": kept[row["sample_id"]]})
                writer.add(row["sample_id"], row["png"], row["prompt"], rec, row["image_emb"], row["text_emb"])
    writer.flush()
    assert len(shards) == len(writer.shards) > 3 and sum(s["count"] for s in shards) == len(kept)
    for a, b in zip(shards, writer.shards):
        assert [v["sha256"] for k, v in sorted(a["files"].items()) if k.startswith("embeddings/")] == \
               [v["sha256"] for k, v in sorted(b["files"].items()) if k.startswith("embeddings/")]
        assert (a["count"], a["first"], a["last"]) == (b["count"], b["first"], b["last"])
        for fmt in (".tar", ".parquet"):
            mine = next(k for k in a["files"] if k.startswith("shards/") and k.endswith(fmt))
            theirs = next(k for k in b["files"] if k.startswith("shards/") and k.endswith(fmt))
            assert staging.store.read_bytes(mine) == staging.store.read_bytes(theirs)


def test_plan_shards_cuts_by_count_and_bytes():
    assert plan_shards([10] * 7, 3, 10**6) == [(0, 3), (3, 6), (6, 7)]
    assert plan_shards([5, 5, 5, 1, 1], 10, 10) == [(0, 2), (2, 5)]
    assert plan_shards([5, 5, 5, 6, 1], 10, 10) == [(0, 2), (2, 4), (4, 5)]
    assert plan_shards([], 3, 10) == []
