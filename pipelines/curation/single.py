"""Curation of a whole run in one process: the reference the partitioned path equals.

The cluster runs the same stage functions per partition (``curation/partition.py``,
``curation/dedup/partitioned.py``, ``execution/curate_plan.py``); tests and the curation benchmark
hold that path to this one, so it stays the plainest statement of what every stage decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipelines.curation import bias
from pipelines.curation.context import Context, build_context
from pipelines.curation.curate import (
    STAGES,
    State,
    bias_summary,
    embeddings,
    enabled_stages,
    finish_summary,
    generated_table,
    hashes_of,
    nullable,
    policy_rank,
    rebalance_info,
    rebalance_target,
    score,
    screened_table,
    settings,
    stage_counts,
    tally,
    with_summary,
)
from pipelines.curation.dedup import hashes as dedup
from pipelines.curation.dedup import semantic as semdedup

if TYPE_CHECKING:
    from pipelines.config import JobSpec


def decide(light: pa.Table, spec: "JobSpec", screened: list[dict[str, Any]], ctx: Context | None = None
           ) -> pa.Table:
    """Decisions table: generated samples in sample order (``light`` has LIGHT_COLUMNS of each),
    then the prompt-screened ones (never generated, so no scores). The whole run in one process; the
    cluster runs the same stage functions per partition (``pipelines/execution/curate_plan.py``)."""
    cur = spec.curation
    st = State(light)
    n = st.n
    summary: dict[str, Any] = {"version": 1, "settings": settings(cur), "stages": []}
    ctx = ctx if ctx is not None else build_context(cur, spec.clip, n > 0)
    emb = embeddings(light) if n else np.zeros((0, 0), np.float32)
    sha, ph = hashes_of(light)
    perceived = score(st, cur, ctx, light, emb, sha, ph, summary)
    _within_run(st, cur, emb, sha, ph, summary)

    # rebalancing on the survivors, then the bias audit after every stage
    audits = None
    if perceived is not None:
        labels, values, groups = perceived
        if cur.rebalance is not None:
            rb = cur.rebalance
            before = st.alive("semantic_dedup")
            sel, records = bias.rebalance(labels[rb.attribute], len(values[rb.attribute]), groups, before,
                                          rebalance_target(cur, values), policy_rank(st, rb.prefer))
            for k in np.flatnonzero(before & ~sel):
                st.reject(int(k), f"rebalance:{rb.attribute}", "rebalance")
            summary["rebalance"] = rebalance_info(cur, values, records)
        b = cur.bias
        audits = {"generated": bias.audit(labels, values, groups, np.ones(n, bool), b.bootstrap, b.confidence,
                                          b.seed)}
        for s in enabled_stages(cur):
            audits[s] = bias.audit(labels, values, groups, st.alive(s), b.bootstrap, b.confidence, b.seed)
        summary["bias"] = bias_summary(cur, values, ctx.logit_scale)
    summary["stages"] = stage_counts(cur, n, {s: int(st.alive(s).sum()) for s in enabled_stages(cur)}, audits)
    table = pa.concat_tables([generated_table(st, light.column("prompt_id").to_pylist(), sha, ph),
                              screened_table(screened)])
    kept = [not r for r in st.reasons]
    finish_summary(summary, tally(table.column("reasons").to_pylist(), st.flags, kept), len(screened), n)
    return with_summary(table, summary)


def _within_run(st: State, cur: Any, emb: np.ndarray, sha: list, ph: list, summary: dict) -> None:
    d = cur.dedup
    n = st.n
    base = policy_rank(st, d.keep)
    rank = base + np.where(st.first_stage < len(STAGES), n, 0)  # already rejected: never the copy kept
    alive = np.ones(n, bool)
    dup_of: list[str | None] = [None] * n
    info: dict[str, Any] = {}
    if d.exact:
        pairs = dedup.exact_pairs(sha)
        drop, of, _ = dedup.resolve(n, pairs, rank, alive)
        st.col("exact_dup_of", [st.ids[o] if o >= 0 else None for o in of])
        for k in np.flatnonzero(drop):
            st.reject(int(k), "exact_duplicate", "exact_dedup")
            dup_of[k] = st.ids[of[k]]
        alive &= ~drop
        info["exact"] = {"pairs": len(pairs), "removed": int(drop.sum())}
    if d.perceptual.enabled and n:
        idx = np.flatnonzero(alive & np.array([h is not None for h in ph], bool))
        pairs, method = dedup.hamming_pairs(dedup.phash_codes([ph[k] for k in idx]), d.perceptual.max_distance)
        pairs = pairs.take(idx)
        nn, nd = dedup.nearest_from_pairs(n, pairs, closer="low")
        drop, of, _ = dedup.resolve(n, pairs, rank, alive, closer="low")
        st.col("phash_nn", [st.ids[o] if o >= 0 else None for o in nn])
        st.col("phash_nn_distance", nullable(nd, np.nan))
        for k in np.flatnonzero(drop):
            st.reject(int(k), "perceptual_duplicate", "perceptual_dedup")
            dup_of[k] = st.ids[of[k]]
        alive &= ~drop
        info["perceptual"] = {"max_distance": d.perceptual.max_distance, "method": method, "pairs": len(pairs),
                              "removed": int(drop.sum())}
    if d.semantic.enabled and n:
        idx = np.flatnonzero(alive)
        res = semdedup.semantic_pairs(emb[idx], d.semantic.eps, d.semantic.cluster_size, d.semantic.seed,
                                   d.semantic.spill)
        pairs = res.pairs.take(idx)
        drop, of, _ = dedup.resolve(n, pairs, rank, alive)
        cluster = np.full(n, -1, np.int64)
        cluster[idx] = res.cluster
        nn = np.full(n, -1, np.int64)
        nn[idx] = np.where(res.nn >= 0, idx[np.maximum(res.nn, 0)], -1)
        nn_cos = np.full(n, np.nan, np.float32)
        nn_cos[idx] = res.nn_cos
        st.col("sem_cluster", nullable(cluster))
        st.col("sem_nn", [st.ids[o] if o >= 0 else None for o in nn])
        st.col("sem_nn_cos", nullable(nn_cos, np.nan))
        for k in np.flatnonzero(drop):
            st.reject(int(k), "semantic_duplicate", "semantic_dedup")
            dup_of[k] = st.ids[of[k]]
        info["semantic"] = {"eps": d.semantic.eps, "clusters": res.n_clusters, "guests": res.guests,
                            "pairs": len(pairs), "removed": int(drop.sum())}
    st.col("dup_of", dup_of)
    summary["dedup"] = {"keep": d.keep, **info}
