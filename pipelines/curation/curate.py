"""Curation: one decision per sample, from the light columns of all staged units (no images).

DESIGN.md step 7. Filters run in this order; each adds reasons, and a sample is kept only if it
has none. The bias audit is taken on the survivors after every stage (filter-induced bias):

1. ``prior_dedup``   duplicates (exact / perceptual / semantic) of earlier published datasets
2. ``reference``     top-1 cosine to a protected reference set at or above its threshold
3. ``safety``        concept / classifier scores at or above threshold (mode ``filter``; ``report``
                     only flags)
4. ``clip_score``    CLIPScore below ``min_clip_score``
5. ``exact_dedup``   equal pixel hash            } within the run; samples that failed 1-4 rank
6. ``perceptual_dedup`` pHash within distance r  } last, so the copy that is kept is a clean one;
7. ``semantic_dedup``   cosine >= 1 - eps        } each method sees the previous one's survivors
8. ``rebalance``     subset matching a target perceived-attribute distribution per prompt group

The decisions table (``DECISIONS_SCHEMA``) has one row per planned sample; the summary that goes
to ``curation.json`` travels in its schema metadata (``synthgen.curation``) and is deterministic.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipelines.curation import bias

from pipelines.curation.dedup import hashes as dedup

from pipelines.curation import references as refsets

from pipelines.curation import safety

from pipelines.curation.dedup import semantic as semdedup

if TYPE_CHECKING:
    from pipelines.config import JobSpec

SUMMARY_KEY = "synthgen.curation"
_F32_MAP = pa.map_(pa.string(), pa.float32())
DECISIONS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("prompt_id", pa.string()),
        ("kept", pa.bool_()),
        ("reasons", pa.list_(pa.string())),  # why it was not kept (empty if kept)
        ("flags", pa.list_(pa.string())),  # kept-with-a-flag findings (safety/reference in report mode)
        ("stage", pa.string()),  # first stage that rejected it (null if kept)
        ("clip_score", pa.float32()),
        ("pixel_sha256", pa.string()),
        ("phash", pa.string()),
        ("exact_dup_of", pa.string()),
        ("phash_nn", pa.string()),  # nearest sample within the pHash radius, and its distance
        ("phash_nn_distance", pa.int32()),
        ("sem_cluster", pa.int32()),
        ("sem_nn", pa.string()),  # nearest sample in its k-means cluster, and the cosine
        ("sem_nn_cos", pa.float32()),
        ("dup_of", pa.string()),  # the kept sample a within-run duplicate was dropped for
        ("prior_match", pa.string()),  # "<dataset>/<sample_id>" of an earlier dataset it duplicates
        ("prior_top1_cos", pa.float32()),
        ("prior_phash_distance", pa.int32()),
        ("ref_top1_cos", _F32_MAP),  # reference set -> top-1 cosine
        ("ref_top1_id", pa.map_(pa.string(), pa.string())),
        ("ref_phash_distance", pa.map_(pa.string(), pa.int32())),
        ("safety_scores", _F32_MAP),  # concept -> score
        ("attr_probs", _F32_MAP),  # "attribute=value" -> zero-shot probability
        ("attr_labels", pa.map_(pa.string(), pa.string())),  # attribute -> perceived value
        ("group", pa.string()),  # prompt group of the bias audit
    ]
)
STAGES = ("prior_dedup", "reference", "safety", "clip_score", "exact_dedup", "perceptual_dedup",
          "semantic_dedup", "rebalance")


class _State:
    def __init__(self, light: pa.Table):
        self.n = light.num_rows
        self.ids = light.column("sample_id").to_pylist()
        self.clip = np.asarray(light.column("clip_score").to_numpy(zero_copy_only=False), np.float64)
        self.reasons: list[list[str]] = [[] for _ in range(self.n)]
        self.flags: list[list[str]] = [[] for _ in range(self.n)]
        self.first_stage = np.full(self.n, len(STAGES), np.int64)
        self.cols: dict[str, list[Any]] = {}

    def reject(self, k: int, reason: str, stage: str) -> None:
        self.reasons[k].append(reason)
        self.first_stage[k] = min(self.first_stage[k], STAGES.index(stage))

    def alive(self, after: str | None = None) -> np.ndarray:
        """Not rejected by ``after`` or any stage before it (None: by no stage at all)."""
        return self.first_stage > (STAGES.index(after) if after else len(STAGES) - 1)

    def col(self, name: str, values: list[Any]) -> None:
        self.cols[name] = values


def _policy_rank(st: _State, policy: str) -> np.ndarray:
    """0 = most preferred. "first": plan order; "best_clip": highest CLIPScore, then plan order."""
    order = np.arange(st.n) if policy == "first" else np.lexsort((np.arange(st.n), -st.clip))
    rank = np.empty(st.n, np.int64)
    rank[order] = np.arange(st.n)
    return rank


def _embeddings(light: pa.Table) -> np.ndarray:
    col = light.column("image_emb").combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32)
    return flat.reshape(len(col), -1)


def _settings(cur: Any) -> dict[str, Any]:
    """The curation spec as run, credentials in storage options redacted."""
    from pipelines.publish.provenance import redact

    out = cur.model_dump()
    for key in ("prior_datasets", "references"):
        for item in out[key]:
            item["storage_options"] = redact(item["storage_options"])
    return out


def _nullable(a: np.ndarray, missing: Any = -1) -> list[Any]:
    return [None if (v == missing or (isinstance(v, float) and np.isnan(v))) else v.item() for v in a]


def decide(light: pa.Table, spec: "JobSpec", screened: list[dict[str, Any]]) -> pa.Table:
    """Decisions table: generated samples in sample order (``light`` has LIGHT_COLUMNS of each),
    then the prompt-screened ones (never generated, so no scores)."""
    cur = spec.curation
    st = _State(light)
    n = st.n
    summary: dict[str, Any] = {"version": 1, "settings": _settings(cur), "stages": []}
    emb = _embeddings(light) if n else np.zeros((0, 0), np.float32)
    sha = light.column("pixel_sha256").to_pylist()
    ph = light.column("phash").to_pylist() if "phash" in light.column_names else [None] * n
    need_text = n and (cur.safety.mode != "off" or cur.bias.attributes)
    need_images = n and any(not r.url.endswith((".npy", ".parquet")) for r in cur.references)
    embedder, logit_scale = None, 100.0
    if need_text or need_images:
        from pipelines.embed.clip import ClipEmbedder

        embedder = ClipEmbedder(spec.clip)
        logit_scale = min(float(embedder.model.logit_scale.detach().exp()), 100.0)

    _prior(st, cur, emb, sha, ph, summary)
    _references(st, cur, emb, sha, ph, embedder, summary)
    if cur.safety.mode != "off" and n:
        scores, thr = safety.concept_scores(emb, cur.safety, embedder.text_embeddings, logit_scale)
        for k, names in enumerate(safety.flagged(scores, thr, n)):
            for c in names:
                (st.reject(k, f"unsafe:{c}", "safety") if cur.safety.mode == "filter" else st.flags[k].append(
                    f"unsafe:{c}"))
        st.col("safety_scores", [list((c, float(s[k])) for c, s in scores.items()) for k in range(n)])
        summary["safety"] = {"mode": cur.safety.mode, "concepts": [
            {"name": c, "threshold": thr[c], "flagged": int((s >= thr[c]).sum()),
             "mean_score": float(s.mean())} for c, s in scores.items()]}
    if cur.min_clip_score is not None:
        for k in np.flatnonzero(st.clip < cur.min_clip_score):
            st.reject(int(k), "low_clip_score", "clip_score")
    _within_run(st, cur, emb, sha, ph, summary)

    # rebalancing on the survivors, then the bias audit after every stage
    audits = _bias(st, cur, light, emb, embedder, logit_scale, summary) if cur.bias.attributes and n else None
    summary["stages"] = _stage_counts(st, cur, audits)
    return _table(light, st, screened, summary)


def _prior(st: _State, cur: Any, emb: np.ndarray, sha: list, ph: list, summary: dict) -> None:
    if not cur.prior_datasets:
        return
    d = cur.dedup
    best_cos = np.full(st.n, np.nan, np.float32)
    best_dist = np.full(st.n, -1, np.int64)
    match: list[str | None] = [None] * st.n
    summary["prior_datasets"] = []
    for p in cur.prior_datasets:
        ext = refsets.load_dataset(p.url, p.storage_options)
        hits = 0
        kinds: list[tuple[str, np.ndarray]] = []
        if d.exact and ext.sha:
            kinds.append(("exact", refsets.exact_match(sha, ext.sha)))
        if d.perceptual.enabled and ext.phash:
            dist, idx = refsets.nearest_phash(ph, ext.phash)
            better = (dist >= 0) & ((best_dist < 0) | (dist < best_dist))
            best_dist[better] = dist[better]
            kinds.append(("perceptual", np.where((dist >= 0) & (dist <= d.perceptual.max_distance), idx, -1)))
        if ext.emb is not None and st.n:
            cos, idx = refsets.top1_cosine(emb, ext.emb)
            best_cos = np.fmax(best_cos, cos)
            if d.semantic.enabled:
                kinds.append(("semantic", np.where(cos >= 1 - d.semantic.eps, idx, -1)))
        for k in range(st.n):
            for kind, idx in kinds:
                if idx[k] >= 0:
                    st.reject(k, f"duplicate_of_prior:{kind}", "prior_dedup")
                    match[k] = match[k] or f"{ext.name}/{ext.ids[idx[k]]}"
                    hits += 1
                    break
        summary["prior_datasets"].append({"url": p.url, "name": ext.name, "samples": len(ext), "matched": hits})
    st.col("prior_match", match)
    st.col("prior_top1_cos", _nullable(best_cos))
    st.col("prior_phash_distance", _nullable(best_dist))


def _references(st: _State, cur: Any, emb: np.ndarray, sha: list, ph: list, embedder: Any, summary: dict) -> None:
    if not cur.references:
        return
    cos_map: list[list] = [[] for _ in range(st.n)]
    id_map: list[list] = [[] for _ in range(st.n)]
    dist_map: list[list] = [[] for _ in range(st.n)]
    summary["references"] = []
    for r in cur.references:
        ext = refsets.load_reference(r.name, r.url, r.storage_options, embedder)
        cos, idx = refsets.top1_cosine(emb, ext.emb) if ext.emb is not None else (
            np.full(st.n, np.nan, np.float32), np.full(st.n, -1, np.int64))
        exact = refsets.exact_match(sha, ext.sha) if ext.sha else np.full(st.n, -1)
        dist, _ = refsets.nearest_phash(ph, ext.phash) if ext.phash else (np.full(st.n, -1), None)
        hit = (cos >= r.threshold) | (exact >= 0)
        for k in range(st.n):
            if not np.isnan(cos[k]):
                cos_map[k].append((r.name, float(cos[k])))
                id_map[k].append((r.name, ext.ids[idx[k]]))
            if dist[k] >= 0:
                dist_map[k].append((r.name, int(dist[k])))
            if hit[k]:
                reason = f"reference_match:{r.name}"
                st.reject(k, reason, "reference") if r.action == "filter" else st.flags[k].append(reason)
        v = cos[~np.isnan(cos)]
        summary["references"].append({
            "name": r.name, "source": r.url, "kind": ext.kind, "size": len(ext), "threshold": r.threshold,
            "action": r.action, "flagged": int(hit.sum()), "exact_matches": int((exact >= 0).sum()),
            "near_misses": int(((v >= r.threshold - 0.05) & (v < r.threshold)).sum()),
            "top1_cos_max": float(v.max()) if len(v) else None, "histogram": refsets.histogram(cos)})
    st.col("ref_top1_cos", cos_map)
    st.col("ref_top1_id", id_map)
    st.col("ref_phash_distance", dist_map)


def _within_run(st: _State, cur: Any, emb: np.ndarray, sha: list, ph: list, summary: dict) -> None:
    d = cur.dedup
    n = st.n
    base = _policy_rank(st, d.keep)
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
        st.col("phash_nn_distance", _nullable(nd, np.nan))
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
        st.col("sem_cluster", _nullable(cluster))
        st.col("sem_nn", [st.ids[o] if o >= 0 else None for o in nn])
        st.col("sem_nn_cos", _nullable(nn_cos, np.nan))
        for k in np.flatnonzero(drop):
            st.reject(int(k), "semantic_duplicate", "semantic_dedup")
            dup_of[k] = st.ids[of[k]]
        info["semantic"] = {"eps": d.semantic.eps, "clusters": res.n_clusters, "guests": res.guests,
                            "pairs": len(pairs), "removed": int(drop.sum())}
    st.col("dup_of", dup_of)
    summary["dedup"] = {"keep": d.keep, **info}


def _enabled_stages(cur: Any) -> list[str]:
    d = cur.dedup
    on = {"prior_dedup": bool(cur.prior_datasets), "reference": bool(cur.references),
          "safety": cur.safety.mode == "filter", "clip_score": cur.min_clip_score is not None,
          "exact_dedup": d.exact, "perceptual_dedup": d.perceptual.enabled, "semantic_dedup": d.semantic.enabled,
          "rebalance": cur.rebalance is not None}
    return [s for s in STAGES if on[s]]


def _stage_counts(st: _State, cur: Any, audits: dict[str, list] | None) -> list[dict[str, Any]]:
    """Survivors after each enabled stage (cumulative), with the bias audit of those survivors."""
    out = [{"stage": "generated", "remaining": st.n, "removed": 0}]
    prev = st.n
    for s in _enabled_stages(cur):
        left = int(st.alive(s).sum())
        out.append({"stage": s, "remaining": left, "removed": prev - left})
        prev = left
    for entry in out if audits else []:
        entry["audit"] = audits[entry["stage"]]
    return out


def _bias(st: _State, cur: Any, light: pa.Table, emb: np.ndarray, embedder: Any, logit_scale: float,
          summary: dict) -> dict[str, list]:
    b = cur.bias
    vocab = bias.vocabulary(embedder.text_embeddings, b.attributes)
    probs = bias.zero_shot(emb, vocab, b.logit_scale or logit_scale)
    labels = {a: p.argmax(axis=1) for a, p in probs.items()}
    values = {a: v for a, (v, _) in vocab.items()}
    attrs = [dict(m or []) for m in light.column("attributes").to_pylist()]
    groups = bias.group_keys(attrs, b.group_by)
    st.col("attr_probs", [[(f"{a}={v}", float(probs[a][k, i])) for a in probs for i, v in enumerate(values[a])]
                          for k in range(st.n)])
    st.col("attr_labels", [[(a, values[a][int(labels[a][k])]) for a in labels] for k in range(st.n)])
    st.col("group", groups)
    rb_info = None
    if cur.rebalance is not None:
        rb = cur.rebalance
        vals = values[rb.attribute]
        tgt = np.ones(len(vals)) if rb.target == "uniform" else np.array([rb.target.get(v, 0.0) for v in vals])
        before = st.alive("semantic_dedup")
        sel, records = bias.rebalance(labels[rb.attribute], len(vals), groups, before, tgt,
                                      _policy_rank(st, rb.prefer))
        for k in np.flatnonzero(before & ~sel):
            st.reject(int(k), f"rebalance:{rb.attribute}", "rebalance")
        for r in records:
            r["unachievable"] = [vals[v] for v in r["unachievable"]]
        rb_info = {"attribute": rb.attribute, "values": vals, "target": (tgt / tgt.sum()).tolist(),
                   "groups": records}
    audits = {"generated": bias.audit(labels, values, groups, np.ones(st.n, bool), b.bootstrap, b.confidence,
                                      b.seed)}
    for s in _enabled_stages(cur):
        audits[s] = bias.audit(labels, values, groups, st.alive(s), b.bootstrap, b.confidence, b.seed)
    summary["bias"] = {"attributes": values, "group_by": b.group_by, "confidence": b.confidence,
                       "bootstrap": b.bootstrap, "logit_scale": b.logit_scale or logit_scale,
                       "estimator": "argmax of zero-shot probabilities"}
    if rb_info:
        summary["rebalance"] = rb_info
    return audits


def _table(light: pa.Table, st: _State, screened: list[dict[str, Any]], summary: dict) -> pa.Table:
    kept = [not r for r in st.reasons]
    stage = [None if st.first_stage[k] >= len(STAGES) else STAGES[st.first_stage[k]] for k in range(st.n)]
    data: dict[str, Any] = {
        "sample_id": st.ids, "prompt_id": light.column("prompt_id").to_pylist(), "kept": kept,
        "reasons": st.reasons, "flags": st.flags, "stage": stage, "clip_score": st.clip.astype(np.float32),
        "pixel_sha256": light.column("pixel_sha256").to_pylist(),
        "phash": light.column("phash").to_pylist() if "phash" in light.column_names else [None] * st.n,
    }
    for f in DECISIONS_SCHEMA:
        data.setdefault(f.name, st.cols.get(f.name, [None] * st.n))
    generated = pa.table({f.name: pa.array(data[f.name], f.type) for f in DECISIONS_SCHEMA}, schema=DECISIONS_SCHEMA)
    rows = [{"sample_id": r["sample_id"], "prompt_id": r["prompt_id"], "kept": False, "reasons": r["reasons"],
             "flags": [], "stage": "prompt_screen"} for r in screened]
    table = pa.concat_tables([generated, pa.Table.from_pylist(rows, schema=DECISIONS_SCHEMA)])
    reasons: dict[str, int] = {}
    for rs in table.column("reasons").to_pylist():
        for r in rs or []:
            reasons[r] = reasons.get(r, 0) + 1
    flags: dict[str, int] = {}
    for fs in st.flags:
        for f in fs:
            flags[f] = flags.get(f, 0) + 1
    summary["counts"] = {"planned": table.num_rows, "screened": len(screened), "generated": st.n,
                         "kept": int(sum(kept)), "flagged_kept": sum(1 for k in range(st.n) if kept[k] and st.flags[k])}
    summary["reasons"] = dict(sorted(reasons.items()))
    summary["flags"] = dict(sorted(flags.items()))
    meta = {SUMMARY_KEY.encode(): json.dumps(summary, sort_keys=True, default=_jsonable).encode()}
    return table.replace_schema_metadata(meta)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def summary_of(decisions: pa.Table) -> dict[str, Any] | None:
    """The curation summary carried by a decisions table (None for a table without one)."""
    raw = (decisions.schema.metadata or {}).get(SUMMARY_KEY.encode())
    return json.loads(raw) if raw else None
