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
9. ``quota``         exactly ``targets.per_group`` per group from the survivors (``curation/targets.py``;
                     cluster path only: the rounds that fill the quotas are the runner's)

The stage functions live here; ``curation/single.py`` runs them over a whole run in one process (the
reference) and ``curation/partition.py`` per partition. The decisions table (``DECISIONS_SCHEMA``) has one row per planned sample; the summary that goes
to ``curation.json`` travels in its schema metadata (``synthgen.curation``) and is deterministic.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.contracts.decisions import DECISIONS_SCHEMA, SUMMARY_KEY
from pipelines.curation import bias
from pipelines.curation import references as refsets
from pipelines.curation import safety
from pipelines.curation import qc
from pipelines.curation.context import Context
from pipelines.curation.groups import group_keys

STAGES = ("prior_dedup", "reference", "safety", "clip_score", "qc", "exact_dedup", "perceptual_dedup",
          "semantic_dedup", "rebalance", "quota")


class State:
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


def policy_rank(st: State, policy: str) -> np.ndarray:
    """0 = most preferred. "first": plan order; "best_clip": highest CLIPScore, then plan order."""
    order = np.arange(st.n) if policy == "first" else np.lexsort((np.arange(st.n), -st.clip))
    rank = np.empty(st.n, np.int64)
    rank[order] = np.arange(st.n)
    return rank


def embeddings(light: pa.Table) -> np.ndarray:
    col = light.column("image_emb").combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32)
    return flat.reshape(len(col), -1)


def settings(cur: Any) -> dict[str, Any]:
    """The curation spec as run, credentials in storage options redacted."""
    from pipelines.publish.provenance import redact

    out = cur.model_dump()
    for key in ("prior_datasets", "references"):
        for item in out[key]:
            item["storage_options"] = redact(item["storage_options"])
    return out


def nullable(a: np.ndarray, missing: Any = -1) -> list[Any]:
    return [None if (v == missing or (isinstance(v, float) and np.isnan(v))) else v.item() for v in a]


def hashes_of(light: pa.Table) -> tuple[list, list]:
    sha = light.column("pixel_sha256").to_pylist()
    ph = light.column("phash").to_pylist() if "phash" in light.column_names else [None] * light.num_rows
    return sha, ph


def score(st: State, cur: Any, ctx: Context, light: pa.Table, emb: np.ndarray, sha: list, ph: list,
          summary: dict) -> tuple[dict, dict, list] | None:
    """Stages 1-4 and the perceived attributes: per sample, so any partition of the samples gives the
    same rows (the summary's counts add up; see ``merge_scores``). Returns (labels, values, groups)."""
    _prior(st, cur, emb, sha, ph, summary, ctx.priors)
    _references(st, cur, emb, sha, ph, ctx.references, summary)
    if cur.safety.mode != "off" and st.n:
        scores, thr = safety.concept_scores(emb, cur.safety, ctx.text, ctx.logit_scale)
        for k, names in enumerate(safety.flagged(scores, thr, st.n)):
            for c in names:
                (st.reject(k, f"unsafe:{c}", "safety") if cur.safety.mode == "filter" else st.flags[k].append(
                    f"unsafe:{c}"))
        st.col("safety_scores", [list((c, float(s[k])) for c, s in scores.items()) for k in range(st.n)])
        summary["safety"] = {"mode": cur.safety.mode, "concepts": [
            {"name": c, "threshold": thr[c], "flagged": int((s >= thr[c]).sum()),
             "mean_score": float(s.mean()), "sum": float(s.astype(np.float64).sum())} for c, s in scores.items()]}
    if cur.min_clip_score is not None:
        for k in np.flatnonzero(st.clip < cur.min_clip_score):
            st.reject(int(k), "low_clip_score", "clip_score")
    if cur.qc is not None and st.n:
        _qc(st, cur, ctx, light, emb, summary)
    if not (cur.bias.attributes and st.n):
        return None
    probs = bias.zero_shot(emb, ctx.vocab, cur.bias.logit_scale or ctx.logit_scale)
    labels = {a: p.argmax(axis=1) for a, p in probs.items()}
    values = {a: v for a, (v, _) in ctx.vocab.items()}
    groups = group_keys([dict(m or []) for m in light.column("attributes").to_pylist()], cur.bias.group_by)
    st.col("attr_probs", [[(f"{a}={v}", float(probs[a][k, i])) for a in probs for i, v in enumerate(values[a])]
                          for k in range(st.n)])
    st.col("attr_labels", [[(a, values[a][int(labels[a][k])]) for a in labels] for k in range(st.n)])
    st.col("group", groups)
    return labels, values, groups


def _qc(st: State, cur: Any, ctx: Context, light: pa.Table, emb: np.ndarray, summary: dict) -> None:
    """Finding QC (``qc.py``): zero-shot here from the embeddings, or the pixel classifier's cells that
    ``partition.score_block`` read from each unit's images (column ``qc``)."""
    q = cur.qc
    if q.classifier == "zero_shot":
        text = {k: dict(zip(ctx.vocab[k][0], ctx.vocab[k][1])) for k in q.attributes}
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        cells = qc.classify_zero_shot(unit, text, q.attributes, cur.bias.logit_scale or ctx.logit_scale)
    elif "qc" in light.column_names:
        cells = light.column("qc").to_pylist()
    else:
        raise ValueError(f"curation.qc.classifier {q.classifier} reads pixels: its cells come from "
                         "partition.score_block (the staged images), not from the light columns alone")
    attrs = [dict(m or []) for m in light.column("attributes").to_pylist()]
    for k, reasons in enumerate(qc.qc_reasons(attrs, cells, q.attributes)):
        for r in reasons:
            st.reject(k, r, "qc") if q.mode == "filter" else st.flags[k].append(r)
    parsed = [json.loads(c) if c else {} for c in cells]
    st.col("qc_pred", [[(a, v["pred"]) for a, v in sorted(p.items())] for p in parsed])
    st.col("qc_score", [[(a, float(v["score"])) for a, v in sorted(p.items())] for p in parsed])
    summary["qc"] = {"classifier": q.classifier, "mode": q.mode, **qc.qc_summary(attrs, cells, q.attributes)}


def _prior(st: State, cur: Any, emb: np.ndarray, sha: list, ph: list, summary: dict,
           exts: list[refsets.ExternalSet]) -> None:
    if not cur.prior_datasets:
        return
    d = cur.dedup
    best_cos = np.full(st.n, np.nan, np.float32)
    best_dist = np.full(st.n, -1, np.int64)
    match: list[str | None] = [None] * st.n
    summary["prior_datasets"] = []
    for p, ext in zip(cur.prior_datasets, exts):
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
    st.col("prior_top1_cos", nullable(best_cos))
    st.col("prior_phash_distance", nullable(best_dist))


def _references(st: State, cur: Any, emb: np.ndarray, sha: list, ph: list, exts: list[refsets.ExternalSet],
                summary: dict) -> None:
    if not cur.references:
        return
    cos_map: list[list] = [[] for _ in range(st.n)]
    id_map: list[list] = [[] for _ in range(st.n)]
    dist_map: list[list] = [[] for _ in range(st.n)]
    summary["references"] = []
    for r, ext in zip(cur.references, exts):
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


def enabled_stages(cur: Any) -> list[str]:
    d = cur.dedup
    on = {"prior_dedup": bool(cur.prior_datasets), "reference": bool(cur.references),
          "safety": cur.safety.mode == "filter", "clip_score": cur.min_clip_score is not None,
          "qc": cur.qc is not None and cur.qc.mode == "filter",
          "exact_dedup": d.exact, "perceptual_dedup": d.perceptual.enabled, "semantic_dedup": d.semantic.enabled,
          "rebalance": cur.rebalance is not None, "quota": cur.targets is not None}
    return [s for s in STAGES if on[s]]


def stage_counts(cur: Any, n: int, alive: dict[str, int], audits: dict[str, list] | None) -> list[dict[str, Any]]:
    """Survivors after each enabled stage (cumulative), with the bias audit of those survivors."""
    out = [{"stage": "generated", "remaining": n, "removed": 0}]
    prev = n
    for s in enabled_stages(cur):
        out.append({"stage": s, "remaining": alive[s], "removed": prev - alive[s]})
        prev = alive[s]
    for entry in out if audits else []:
        entry["audit"] = audits[entry["stage"]]
    return out


def rebalance_target(cur: Any, values: dict[str, list[str]]) -> np.ndarray:
    rb = cur.rebalance
    vals = values[rb.attribute]
    return np.ones(len(vals)) if rb.target == "uniform" else np.array([rb.target.get(v, 0.0) for v in vals])


def rebalance_info(cur: Any, values: dict[str, list[str]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's rebalance entry from per-group records (sorted by group)."""
    rb = cur.rebalance
    vals = values[rb.attribute]
    tgt = rebalance_target(cur, values)
    for r in records:
        r["unachievable"] = [vals[v] for v in r["unachievable"]]
    return {"attribute": rb.attribute, "values": vals, "target": (tgt / tgt.sum()).tolist(), "groups": records}


def bias_summary(cur: Any, values: dict[str, list[str]], logit_scale: float) -> dict[str, Any]:
    b = cur.bias
    return {"attributes": values, "group_by": b.group_by, "confidence": b.confidence, "bootstrap": b.bootstrap,
            "logit_scale": b.logit_scale or logit_scale, "estimator": "argmax of zero-shot probabilities"}


def generated_table(st: State, prompt_ids: list[str], sha: list, ph: list) -> pa.Table:
    """Decision rows of the generated samples of ``st`` (no summary)."""
    kept = [not r for r in st.reasons]
    stage = [None if st.first_stage[k] >= len(STAGES) else STAGES[st.first_stage[k]] for k in range(st.n)]
    data: dict[str, Any] = {
        "sample_id": st.ids, "prompt_id": prompt_ids, "kept": kept, "reasons": st.reasons, "flags": st.flags,
        "stage": stage, "clip_score": st.clip.astype(np.float32), "pixel_sha256": sha, "phash": ph,
    }
    for f in DECISIONS_SCHEMA:
        data.setdefault(f.name, st.cols.get(f.name, [None] * st.n))
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in DECISIONS_SCHEMA}, schema=DECISIONS_SCHEMA)


def screened_table(screened: list[dict[str, Any]]) -> pa.Table:
    rows = [{"sample_id": r["sample_id"], "prompt_id": r["prompt_id"], "kept": False, "reasons": r["reasons"],
             "flags": [], "stage": "prompt_screen"} for r in screened]
    return pa.Table.from_pylist(rows, schema=DECISIONS_SCHEMA)


def failed_table(failed: list[dict[str, Any]]) -> pa.Table:
    """Samples whose generation raised: never curated (no image), recorded with their error."""
    return pa.Table.from_pylist([{"sample_id": r["sample_id"], "prompt_id": r["prompt_id"], "kept": False,
                                  "reasons": [f"generation_failed: {r['error']}"]} for r in failed],
                                schema=DECISIONS_SCHEMA)


def tally(reasons: list[list[str] | None], flags: list[list[str]], kept: list[bool]) -> dict[str, Any]:
    """Counts that add up over partitions: reasons (all rows given), flags and kept (generated rows)."""
    r: dict[str, int] = {}
    for rs in reasons:
        for x in rs or []:
            r[x] = r.get(x, 0) + 1
    f: dict[str, int] = {}
    for fs in flags:
        for x in fs:
            f[x] = f.get(x, 0) + 1
    return {"reasons": r, "flags": f, "kept": int(sum(kept)),
            "flagged_kept": sum(1 for k, fs in zip(kept, flags) if k and fs)}


def finish_summary(summary: dict[str, Any], t: dict[str, Any], screened: int, generated: int) -> None:
    for c in (summary.get("safety") or {}).get("concepts", []):
        c.pop("sum", None)
    summary["counts"] = {"planned": generated + screened, "screened": screened, "generated": generated,
                         "kept": t["kept"], "flagged_kept": t["flagged_kept"]}
    summary["reasons"] = dict(sorted(t["reasons"].items()))
    summary["flags"] = dict(sorted(t["flags"].items()))


def with_summary(table: pa.Table, summary: dict[str, Any]) -> pa.Table:
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
