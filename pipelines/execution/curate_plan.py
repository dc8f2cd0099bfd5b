"""Curation over the staged units as Ray tasks: blocks of units, map / reduce for dedup and rebalancing.

The driver submits tasks and passes object references between them; it only ``get``s small
aggregates (sample counts per block, pair and removal counts, per-group rebalance records and
audit counts) and the file manifests. Workers read the columns they need from staging and write
the decisions and timings parts. The maths is in ``pipelines/curation/`` (``partition``,
``dedup/partitioned``, ``context``); this module only moves data. Without a Ray cluster in this
process, small jobs run the same steps inline (no fixed cost for the dozens of tiny test jobs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.config import JobSpec, OutputSpec
from pipelines.errors import SynthgenError
from pipelines.contracts.decisions import FAILED, GENERATED, SCREENED, decisions_part, parquet_bytes, timings_part
from pipelines.contracts.unit import Staging
from pipelines.curation import curate, partition, targets
from pipelines.curation.context import build_context
from pipelines.curation.dedup import partitioned as pt
from pipelines.curation.dedup.semantic import train_rows

#: Jobs at least this large start a Ray cluster for curation when none is running in this process.
RAY_MIN_SAMPLES = 20_000
BLOCK_SAMPLES = 8192


class Executor:
    """``submit`` runs ``fn`` as a Ray task (or inline); multiple returns come back as a list."""

    def __init__(self, use_ray: bool):
        self.use_ray = use_ray
        self._remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable, *args: Any, num_returns: int = 1, num_cpus: float = 1) -> Any:
        if not self.use_ray:
            out = fn(*args)
            return list(out) if num_returns > 1 else out
        import ray

        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn)
        return self._remote[fn].options(num_returns=num_returns, num_cpus=num_cpus, max_retries=3).remote(*args)

    def get(self, refs: Any) -> Any:
        """Values of ``refs``; a list is read in order, so the first failed task in submission order is the
        one reported, and a task's own error (``SynthgenError``: storage, spec) comes back as itself."""
        if not self.use_ray:
            return refs
        import ray

        try:
            return [ray.get(r) for r in refs] if isinstance(refs, list) else ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, SynthgenError):
                raise e.cause from None
            raise

    def put(self, obj: Any) -> Any:
        if not self.use_ray:
            return obj
        import ray

        return ray.put(obj)


@dataclass
class Where:
    """How a worker reaches staging and the output (plain data: travels to tasks)."""

    output: dict[str, Any]
    fingerprint: str

    def staging(self) -> Staging:
        return Staging(OutputSpec.model_validate(self.output).store(), self.fingerprint)

    def loader(self) -> partition.Loader:
        st = self.staging()
        return lambda uid, cols: st.read_unit(uid, cols)

    def write(self, key: str, data: bytes) -> dict[str, Any]:
        import hashlib

        self.staging().store.write_bytes(key, data)
        return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


@dataclass
class Curated:
    summary: dict[str, Any]
    files: dict[str, dict[str, Any]]  # decisions and timings parts: key -> {sha256, bytes}
    kept: int
    rejections: dict[str, int]  # reason -> count over every planned sample
    publish: list[Any] = field(default_factory=list)  # per block: kept rows per unit (refs on Ray)
    executor: Executor | None = None
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # quota group -> generated, kept, rejected


# ------------------------------------------------------------------------------------------ tasks
def _context(cur: Any, clip: Any, any_samples: bool, threads: int) -> tuple[Any, float]:
    ctx = build_context(cur, clip, any_samples, threads)
    return ctx, ctx.logit_scale


def _score(no: int, units: list[str], where: Where, cur: Any, ctx: Any) -> tuple[Any, dict, dict]:
    return partition.score_block(no, units, where.loader(), cur, ctx)


def _exact_map(block: partition.Block, offset: int, p: int) -> list[Any]:
    block.offset = offset
    return [block, *pt.exact_map(block, p)]


def _perceptual_map(block: partition.Block, offset: int) -> tuple[Any, Any]:
    block.offset = offset
    return block, pt.perceptual_map(block)


def _sem_rows(block: partition.Block, offset: int) -> tuple[Any, int]:
    block.offset = offset
    block.sem_rows = pt.sem_rows(block)
    return block, len(block.sem_rows)


def _candidate_emb(block: partition.Block, where: Where) -> np.ndarray:
    load = where.loader()
    tables = [load(u, ["image_emb"]) for u in block.units]
    starts = np.cumsum([0] + [t.num_rows for t in tables])
    if not tables:
        return np.zeros((0, 0), np.float32)
    import pyarrow as pa

    rows = starts[block.unit_of[block.sem_rows]] + block.row_of[block.sem_rows]
    return curate.embeddings(pa.concat_tables(tables).select(["image_emb"]).take(pa.array(rows, pa.int64())))


def _sem_train(block: partition.Block, c_off: int, where: Where, train: np.ndarray) -> np.ndarray:
    block.c_off = c_off
    return pt.sem_train(block, _candidate_emb(block, where), train)


def _sem_assign(block: partition.Block, c_off: int, where: Where, model: Any, spill: float, p: int) -> list[Any]:
    block.c_off = c_off
    guests, parts = pt.sem_assign(block, _candidate_emb(block, where), model, spill, p)
    return [block, guests, *parts]


def _rebalance_map(block: partition.Block, offset: int, attribute: str, p: int) -> list[Any]:
    block.offset = offset
    return [block, *pt.rebalance_map(block, attribute, p)]


def _reject(block: partition.Block, offset: int, reason: str, stage: str, *rejects: Any) -> partition.Block:
    block.offset = offset
    for r in rejects:
        partition.apply_rejects(block, r["gidx"], reason, stage)
    return block


def _quota_map(block: partition.Block, offset: int, p: int, attribute: str | None) -> list[Any]:
    block.offset = offset
    return [block, *targets.quota_map(block, p, attribute)]


def _finish(block: partition.Block, offset: int, cur: Any, where: Where) -> tuple[dict, dict]:
    block.offset = offset
    tables, counts, publish = partition.finish_block(block, cur, where.loader())
    counts["files"] = {decisions_part(GENERATED, block.no): where.write(decisions_part(GENERATED, block.no),
                                                                       parquet_bytes(tables["decisions"])),
                       timings_part(block.no): where.write(timings_part(block.no), parquet_bytes(tables["timings"]))}
    if "failed" in tables:
        key = decisions_part(FAILED, block.no)
        counts["files"][key] = where.write(key, parquet_bytes(tables["failed"]))
    return counts, publish


# ------------------------------------------------------------------------------------------ plan
def choose_executor(n_samples: int, use_ray: bool | None, num_cpus: int | None = None) -> Executor:
    from pipelines.execution.fanout import cluster_ready

    if use_ray is None:
        use_ray = cluster_ready() or n_samples >= RAY_MIN_SAMPLES
    if use_ray:
        from pipelines.execution.runner import ensure_ray

        ensure_ray(num_cpus, quiet=True)
    return Executor(use_ray)


def curate_units(spec: JobSpec, unit_ids: list[str], staging: Staging, screened: list[dict[str, Any]], *,
                 executor: Executor, block_units: int | None = None, buckets: int | None = None) -> Curated:
    """Decide every staged sample; decisions and timings parts are written under the output root."""
    cur, d = spec.curation, spec.curation.dedup
    ex = executor
    where = Where(spec.output.model_dump(), staging.prefix.split("/", 1)[1])
    per = block_units or max(1, BLOCK_SAMPLES // spec.unit_size)
    units = [unit_ids[i:i + per] for i in range(0, len(unit_ids), per)] or [[]]
    nb = len(units)
    p = buckets or (max(1, min(nb, 2 * int(_cpus(ex)))) if ex.use_ray else 1)
    ctx, scale = ex.submit(_context, cur, spec.clip, bool(unit_ids), spec.resources.embed.torch_threads,
                           num_returns=2)
    scored = [ex.submit(_score, b, us, where, cur, ctx, num_returns=3) for b, us in enumerate(units)]
    blocks = [s[0] for s in scored]
    parts = ex.get([s[1] for s in scored])
    sizes = [q["n"] for q in parts]
    offsets = np.cumsum([0] + sizes)[:-1].tolist()
    n = int(sum(sizes))
    bounds = np.r_[offsets, n].astype(np.int64)
    summary: dict[str, Any] = {"version": 1, "settings": curate.settings(cur), "stages": [],
                               **partition.merge_scores(parts)}
    if "safety" in summary:
        means = ex.get(ex.submit(partition.safety_means, *[s[2] for s in scored]))
        for c in summary["safety"]["concepts"]:
            c["mean_score"] = means[c["name"]]
    info: dict[str, Any] = {}

    def route(reds: list, b: int, at: int) -> list:
        return [r[at + b] for r in reds]

    if d.exact:
        maps = [ex.submit(_exact_map, blk, off, p, num_returns=p + 1) for blk, off in zip(blocks, offsets)]
        reds = [ex.submit(pt.exact_reduce, d.keep, bounds, *[m[1 + q] for m in maps], num_returns=nb + 1)
                for q in range(p)]
        aggs = ex.get([r[0] for r in reds])
        info["exact"] = {"pairs": sum(a["pairs"] for a in aggs), "removed": sum(a["removed"] for a in aggs)}
        blocks = [ex.submit(pt.apply_exact, m[0], *route(reds, b, 1)) for b, m in enumerate(maps)]
    if d.perceptual.enabled and n:
        maps = [ex.submit(_perceptual_map, blk, off, num_returns=2) for blk, off in zip(blocks, offsets)]
        red = ex.submit(pt.perceptual_reduce, d.perceptual.max_distance, d.keep, bounds, *[m[1] for m in maps],
                        num_returns=nb + 1)
        info["perceptual"] = ex.get(red[0])
        blocks = [ex.submit(pt.apply_perceptual, m[0], red[1 + b]) for b, m in enumerate(maps)]
    if d.semantic.enabled and n:
        info["semantic"], blocks = _semantic(ex, blocks, offsets, where, d, nb, p)
    summary["dedup"] = {"keep": d.keep, **info}

    values = {a: list(v) for a, v in cur.bias.attributes.items()}
    rebalanced = cur.rebalance is not None and bool(cur.bias.attributes) and bool(n)
    if rebalanced:
        rb = cur.rebalance
        maps = [ex.submit(_rebalance_map, blk, off, rb.attribute, p, num_returns=p + 1)
                for blk, off in zip(blocks, offsets)]
        reds = [ex.submit(pt.rebalance_reduce, rb.prefer, len(values[rb.attribute]),
                          curate.rebalance_target(cur, values), bounds, *[m[1 + q] for m in maps],
                          num_returns=nb + 1) for q in range(p)]
        records = sorted((r for rs in ex.get([r[0] for r in reds]) for r in rs), key=lambda r: r["group"])
        summary["rebalance"] = curate.rebalance_info(cur, values, records)
        blocks = [ex.submit(_reject, m[0], off, f"rebalance:{rb.attribute}", "rebalance", *route(reds, b, 1))
                  for b, (m, off) in enumerate(zip(maps, offsets))]
    if cur.targets is not None and n:
        tg = cur.targets
        # the quota keeps the rebalanced distribution where both split the samples the same way; in a finer
        # quota group (e.g. one stated colour) stratifying would prefer the samples drawn off-prompt
        stratify = rebalanced and set(cur.bias.group_by or ()) == set(tg.group_by)
        attr = cur.rebalance.attribute if stratify else None
        weights = curate.rebalance_target(cur, values) if stratify else None
        maps = [ex.submit(_quota_map, blk, off, p, attr, num_returns=p + 1) for blk, off in zip(blocks, offsets)]
        reds = [ex.submit(targets.quota_reduce, tg.per_group, tg.select, weights, bounds, *[m[1 + q] for m in maps],
                          num_returns=nb + 1) for q in range(p)]
        summary["quota"] = sorted((r for rs in ex.get([r[0] for r in reds]) for r in rs), key=lambda r: r["group"])
        blocks = [ex.submit(_reject, m[0], off, "quota_surplus", "quota", *route(reds, b, 1))
                  for b, (m, off) in enumerate(zip(maps, offsets))]
    fins = [ex.submit(_finish, blk, off, cur, where, num_returns=2) for blk, off in zip(blocks, offsets)]
    counts = ex.get([f[0] for f in fins])
    return _summarise(ex, spec, summary, counts, screened, values, ex.get(scale), n, where,
                      [f[1] for f in fins])


def _semantic(ex: Executor, blocks: list, offsets: list[int], where: Where, d: Any, nb: int, p: int
              ) -> tuple[dict[str, Any], list]:
    sd = d.semantic
    prepared = [ex.submit(_sem_rows, blk, off, num_returns=2) for blk, off in zip(blocks, offsets)]
    sizes = ex.get([q[1] for q in prepared])
    c_offs = np.cumsum([0] + sizes)[:-1].tolist()
    n_c = int(sum(sizes))
    c_bounds = np.r_[c_offs, n_c].astype(np.int64)
    k = max(1, int(round(n_c / max(sd.cluster_size, 2))))
    model = None
    if n_c > sd.cluster_size and k > 1:
        train = ex.put(train_rows(n_c, k, sd.seed))
        parts = [ex.submit(_sem_train, q[0], c, where, train) for q, c in zip(prepared, c_offs)]
        model = ex.submit(pt.sem_fit, k, sd.seed, *parts)
    assigned = [ex.submit(_sem_assign, q[0], c, where, model, sd.spill, p, num_returns=p + 2)
                for q, c in zip(prepared, c_offs)]
    guests = int(sum(ex.get([a[1] for a in assigned])))
    reds = [ex.submit(pt.sem_reduce, 1.0 - sd.eps, c_bounds, *[a[2 + q] for a in assigned], num_returns=nb + 2)
            for q in range(p)]
    res = ex.submit(pt.sem_resolve, d.keep, guests > 0, c_bounds, *[r[1] for r in reds], num_returns=nb + 1)
    agg = ex.get(res[0])
    clusters = sum(a["clusters"] for a in ex.get([r[0] for r in reds]))
    blocks = [ex.submit(pt.apply_semantic, a[0], res[1 + b], *[r[2 + b] for r in reds]) for b, a in enumerate(assigned)]
    return {"eps": sd.eps, "clusters": clusters, "guests": guests, **agg}, blocks


def _audits(counts: list[dict], values: dict[str, list[str]], cur: Any) -> dict[str, list]:
    total: dict[tuple, np.ndarray] = {}
    for c in counts:
        for key, v in c["audit"].items():
            total[key] = total[key] + v if key in total else v
    return partition.audits_from_counts(total, values, cur)


def _summarise(ex: Executor, spec: JobSpec, summary: dict, counts: list[dict], screened: list[dict],
               values: dict[str, list[str]], logit_scale: float, n: int, where: Where, publish: list) -> Curated:
    cur = spec.curation
    audits = None
    if cur.bias.attributes and n:
        audits = ex.get(ex.submit(_audits, counts, values, cur))
        summary["bias"] = curate.bias_summary(cur, values, logit_scale)
    alive = {s: sum(c["alive"][s] for c in counts) for s in curate.enabled_stages(cur)}
    summary["stages"] = curate.stage_counts(cur, n, alive, audits)
    files: dict[str, dict[str, Any]] = {}
    for c in counts:
        files.update(c["files"])
    scr = curate.screened_table(screened)
    if scr.num_rows:
        files[decisions_part(SCREENED, 0)] = where.write(decisions_part(SCREENED, 0), parquet_bytes(scr))
    tallies = [c["tally"] for c in counts] + [curate.tally(scr.column("reasons").to_pylist(), [], [])]
    merged = {"reasons": _add([t["reasons"] for t in tallies]), "flags": _add([t["flags"] for t in tallies]),
              "kept": sum(t["kept"] for t in tallies), "flagged_kept": sum(t["flagged_kept"] for t in tallies)}
    curate.finish_summary(summary, merged, len(screened), n)
    rejections = _add([merged["reasons"]] + [c["failed"] for c in counts])
    groups: dict[str, dict[str, Any]] = {}
    for c in counts:
        for g, e in c.get("groups", {}).items():
            t = groups.setdefault(g, {"generated": 0, "kept": 0, "rejected": {}})
            t["generated"] += e["generated"]
            t["kept"] += e["kept"]
            t["rejected"] = _add([t["rejected"], e["rejected"]])
    return Curated(summary, dict(sorted(files.items())), merged["kept"], rejections, publish, ex,
                   dict(sorted(groups.items())))


def _add(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _cpus(ex: Executor) -> float:
    import ray

    return ray.cluster_resources().get("CPU", os.cpu_count() or 1)
