"""Curation of one partition ("block": consecutive work units) between the cluster-wide steps.

Pure functions (no ray): ``pipelines/execution/curate_plan.py`` runs them as tasks and moves their
small outputs. The order of stages and every per-sample value are those of ``single.decide``; a
block's samples carry global indices (``offset`` + row) so priorities and tie-breaks are global.

- ``score_block``: stages 1-4 and perceived attributes (per sample; summary parts that add up);
- ``apply_*``: a within-run dedup or rebalancing result routed back to the block;
- ``finish_block``: the block's decision rows, timings rows, counts for the summary and the bias
  audit, and what publishing needs (kept rows per unit, their PNG sizes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contracts.decisions import TIMINGS_SCHEMA
from pipelines.curation import curate, qc
from pipelines.curation.context import Context

#: Columns the curation of a block reads from each staged unit (no image bytes).
SCORE_COLUMNS = ["sample_id", "prompt_id", "error", "clip_score", "pixel_sha256", "phash", "image_emb",
                 "attributes"]
Loader = Callable[[str, list[str]], pa.Table]


@dataclass
class Block:
    no: int
    units: list[str]
    st: curate.State
    prompt_ids: list[str]
    sha: list[str | None]
    ph: list[str | None]
    unit_of: np.ndarray  # index into ``units`` of every generated row
    row_of: np.ndarray  # its row in the staged unit (failed rows included there)
    failed: list[dict[str, Any]]
    perceived: tuple[dict, dict, list] | None
    offset: int = 0
    dup_of: list[str | None] = field(default_factory=list)
    dd_alive: np.ndarray | None = None  # not dropped by a within-run dedup stage so far
    c_off: int = 0  # index of its first semantic-dedup candidate among all candidates
    sem_rows: np.ndarray | None = None  # its candidate rows
    sem_labels: np.ndarray | None = None  # their k-means cluster
    qgroup: list[str] | None = None  # quota group of every generated row (``curation.targets``)
    qfailed: list[str] = field(default_factory=list)  # ... and of every failed one

    @property
    def gidx(self) -> np.ndarray:
        return self.offset + np.arange(self.st.n, dtype=np.int64)

    def rejected(self) -> np.ndarray:
        return self.st.first_stage < len(curate.STAGES)


def score_block(no: int, units: list[str], load: Loader, cur: Any, ctx: Context
                ) -> tuple[Block, dict[str, Any], dict[str, np.ndarray]]:
    """Stages 1-4 on one block: the block, its summary part (``merge_scores`` adds them) and its safety
    scores per concept (``safety_means`` takes the mean over all blocks exactly as one array's)."""
    tables, unit_of, row_of = [], [], []
    pixel_qc = cur.qc is not None and cur.qc.classifier != "zero_shot"
    for u, uid in enumerate(units):
        t = load(uid, SCORE_COLUMNS)
        if pixel_qc:  # the one curation step that needs pixels: one unit's images at a time
            cells = qc.unit_cells(cur.qc.classifier, load(uid, ["png"]).column("png").to_pylist(), cur.qc.attributes)
            t = t.append_column("qc", pa.array(cells, pa.string()))
        tables.append(t)
        unit_of.append(np.full(t.num_rows, u, np.int32))
        row_of.append(np.arange(t.num_rows, dtype=np.int32))
    light = pa.concat_tables(tables) if tables else pa.table({c: [] for c in SCORE_COLUMNS + ["qc"] * pixel_qc})
    ok = pc.is_null(light.column("error")).to_numpy(zero_copy_only=False) if light.num_rows else np.zeros(0, bool)
    failed = [{"sample_id": r["sample_id"], "prompt_id": r["prompt_id"], "error": r["error"]}
              for r in light.filter(pa.array(~ok)).select(["sample_id", "prompt_id", "error"]).to_pylist()]
    groups = _quota_groups(light, cur)
    light = light.filter(pa.array(ok))
    st = curate.State(light)
    emb = curate.embeddings(light) if st.n else np.zeros((0, 0), np.float32)
    sha, ph = curate.hashes_of(light)
    summary: dict[str, Any] = {}
    perceived = curate.score(st, cur, ctx, light, emb, sha, ph, summary)
    cat = (lambda xs: np.concatenate(xs)[ok] if xs else np.zeros(0, np.int32))
    block = Block(no, units, st, light.column("prompt_id").to_pylist(), sha, ph, cat(unit_of), cat(row_of), failed,
                  perceived, dup_of=[None] * st.n, dd_alive=np.ones(st.n, bool),
                  qgroup=None if groups is None else [g for g, k in zip(groups, ok) if k],
                  qfailed=[] if groups is None else [g for g, k in zip(groups, ok) if not k])
    scores = {c: np.array([dict(r)[c] for r in st.cols["safety_scores"]], np.float32)
              for c in [x["name"] for x in summary["safety"]["concepts"]]} if "safety" in summary else {}
    return block, {"n": st.n, **summary}, scores


def _quota_groups(light: pa.Table, cur: Any) -> list[str] | None:
    """Each row's quota group (``targets.group_by`` over its manifest attributes), or None without targets."""
    if cur.targets is None:
        return None
    from pipelines.curation.groups import group_keys

    return group_keys([dict(a or []) for a in light.column("attributes").to_pylist()], cur.targets.group_by)


def safety_means(*scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean score per concept over every block's samples: numpy's float32 mean of the whole column."""
    parts = [s for s in scores if s]
    return {c: float(np.concatenate([s[c] for s in parts]).mean()) for c in parts[0]} if parts else {}


def merge_scores(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary entries of stages 1-4 from the blocks' parts (in block order)."""
    out: dict[str, Any] = {}
    pri = [p["prior_datasets"] for p in parts if "prior_datasets" in p]
    if pri:
        out["prior_datasets"] = [{**e[0], "matched": sum(x["matched"] for x in e)} for e in zip(*pri)]
    refs = [p["references"] for p in parts if "references" in p]
    if refs:
        out["references"] = []
        for e in zip(*refs):
            tops = [x["top1_cos_max"] for x in e if x["top1_cos_max"] is not None]
            out["references"].append({
                **e[0], **{k: sum(x[k] for x in e) for k in ("flagged", "exact_matches", "near_misses")},
                "top1_cos_max": max(tops) if tops else None,
                "histogram": {"edges": e[0]["histogram"]["edges"],
                              "counts": np.sum([x["histogram"]["counts"] for x in e], axis=0).astype(int).tolist()}})
    qcs = [p["qc"] for p in parts if "qc" in p]
    if qcs:
        out["qc"] = qc.merge_summaries(qcs)
    saf = [p for p in parts if "safety" in p]
    if saf:
        n = sum(p["n"] for p in saf)
        concepts = []
        for e in zip(*(p["safety"]["concepts"] for p in saf)):
            total = sum(x["sum"] for x in e)
            concepts.append({"name": e[0]["name"], "threshold": e[0]["threshold"],
                             "flagged": sum(x["flagged"] for x in e), "mean_score": float(np.float32(total / n)),
                             "sum": total})  # mean_score: replaced by ``safety_means`` where it runs
        out["safety"] = {"mode": saf[0]["safety"]["mode"], "concepts": concepts}
    return out


# ------------------------------------------------------------------------- keys for global order
def keys(block: Block, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """What a sample's priority depends on: (rejected by stages 1-4, CLIPScore, global index)."""
    sel = np.arange(block.st.n) if rows is None else rows
    return {"rej": block.rejected()[sel], "clip": block.st.clip[sel], "gidx": block.gidx[sel]}


def local_rank(k: dict[str, np.ndarray], policy: str, with_rejected: bool = True) -> np.ndarray:
    """Ranks among the given samples in the order ``curate.policy_rank`` (+ rejected last) gives them."""
    cols = [k["gidx"]] + ([] if policy == "first" else [-k["clip"]]) + ([k["rej"]] if with_rejected else [])
    order = np.lexsort(cols)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


# ----------------------------------------------------------------------------- results routed back
def _thaw(block: Block) -> None:
    """Arrays of a block read from Ray's object store are read-only views: copy the ones changed here."""
    if not block.st.first_stage.flags.writeable:
        block.st.first_stage = block.st.first_stage.copy()
    if block.dd_alive is not None and not block.dd_alive.flags.writeable:
        block.dd_alive = block.dd_alive.copy()


def apply_drops(block: Block, drops: dict[str, Any], reason: str, stage: str, col: str | None = None) -> None:
    """Reject rows dropped as duplicates (``drops``: gidx, of_sid); ``col`` also records whom."""
    _thaw(block)
    of: list[str | None] = [None] * block.st.n
    for g, sid in zip(drops["gidx"].tolist(), drops["of"]):
        k = g - block.offset
        block.st.reject(k, reason, stage)
        block.dup_of[k] = of[k] = sid
        block.dd_alive[k] = False
    if col:
        block.st.col(col, of)


def apply_rejects(block: Block, gidx: np.ndarray, reason: str, stage: str) -> None:
    _thaw(block)
    for k in sorted((np.asarray(gidx, np.int64) - block.offset).tolist()):
        block.st.reject(k, reason, stage)


# -------------------------------------------------------------------------------------- finishing
def audit_counts(block: Block, cur: Any) -> dict[tuple[str, str, str], np.ndarray]:
    """(stage, group, attribute) -> counts of perceived values among the stage's survivors."""
    if block.perceived is None:
        return {}
    labels, values, groups = block.perceived
    g = np.asarray(groups, dtype=object)
    out = {}
    for s in ["generated"] + curate.enabled_stages(cur):
        mask = np.ones(block.st.n, bool) if s == "generated" else block.st.alive(s)
        for group in sorted(set(groups)):
            sel = mask & (g == group)
            for a in labels:
                out[(s, group, a)] = np.bincount(labels[a][sel], minlength=len(values[a]))
    return out


def audits_from_counts(counts: dict[tuple[str, str, str], np.ndarray], values: dict[str, list[str]],
                       cur: Any) -> dict[str, list]:
    """``bias.audit`` of every stage from counts alone: each (group, attribute) entry depends only on
    the counts of its group (its own seeded generator), so a population rebuilt from them gives it."""
    from pipelines.curation import bias

    b = cur.bias
    groups = sorted({g for (_, g, _) in counts})
    out: dict[str, list] = {}
    for s in ["generated"] + curate.enabled_stages(cur):
        entries: list = []
        for group in groups:
            n = int(sum(counts[(s, group, next(iter(values)))]))
            lab = {a: np.repeat(np.arange(len(values[a])), counts[(s, group, a)]) if n else np.zeros(1, np.int64)
                   for a in values}
            entries += bias.audit(lab, values, [group] * max(n, 1), np.full(max(n, 1), n > 0), b.bootstrap,
                                  b.confidence, b.seed)
        out[s] = entries
    return out


def group_counts(block: Block, kept: list[bool]) -> dict[str, dict[str, Any]]:
    """Per quota group: samples generated (failed included), kept, and rejections by first stage (the
    stage that decided it; ``quota`` for a surplus sample): what the quota loop and its report add up."""
    out: dict[str, dict[str, Any]] = {}

    def entry(g: str) -> dict[str, Any]:
        return out.setdefault(g, {"generated": 0, "kept": 0, "rejected": {}})

    for g in block.qfailed:
        e = entry(g)
        e["generated"] += 1
        e["rejected"]["generation_failed"] = e["rejected"].get("generation_failed", 0) + 1
    for k, g in enumerate(block.qgroup or []):
        e = entry(g)
        e["generated"] += 1
        if kept[k]:
            e["kept"] += 1
        else:
            s = curate.STAGES[block.st.first_stage[k]]
            e["rejected"][s] = e["rejected"].get(s, 0) + 1
    return out


def finish_block(block: Block, cur: Any, load: Loader) -> tuple[dict[str, pa.Table], dict[str, Any], dict[str, Any]]:
    """(tables to write, counts for the driver, kept rows for publishing) of a fully decided block."""
    st = block.st
    st.col("dup_of", block.dup_of)
    table = curate.generated_table(st, block.prompt_ids, block.sha, block.ph)
    kept = [not r for r in st.reasons]
    counts = {"n": st.n, "tally": curate.tally(table.column("reasons").to_pylist(), st.flags, kept),
              "alive": {s: int(st.alive(s).sum()) for s in curate.enabled_stages(cur)},
              "audit": audit_counts(block, cur),
              "failed": curate.tally([[f"generation_failed: {f['error']}"] for f in block.failed], [], [])["reasons"]}
    if block.qgroup is not None:
        counts["groups"] = group_counts(block, kept)
    timings, publish = [], {"units": []}
    for u, uid in enumerate(block.units):
        t = load(uid, ["sample_id", "gen_ms", "clip_ms", "gen_worker", "png"])
        timings.append(pa.table({"sample_id": t.column("sample_id"), "unit_id": pa.array([uid] * t.num_rows),
                                 "gen_ms": t.column("gen_ms"), "clip_ms": t.column("clip_ms"),
                                 "gen_worker": t.column("gen_worker")}).cast(TIMINGS_SCHEMA))
        mine = np.flatnonzero((block.unit_of == u) & np.array(kept, bool))
        rows = block.row_of[mine]
        sizes = pc.binary_length(t.column("png")).to_numpy(zero_copy_only=False)[rows] + 2048 if len(rows) else []
        publish["units"].append({"unit_id": uid, "rows": rows.astype(np.int64).tolist(),
                                 "flags": [st.flags[k] for k in mine], "sizes": [int(x) for x in sizes]})
    tables = {"decisions": table, "timings": pa.concat_tables(timings) if timings else TIMINGS_SCHEMA.empty_table()}
    if block.failed:
        tables["failed"] = curate.failed_table(block.failed)
    return tables, counts, publish
