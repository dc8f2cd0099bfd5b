"""The audit report's per-dataset sections that need no model: summary (counts, rejections, timings),
perceived attributes per group, diversity and residual duplicates, and safety. Each takes the streamed
aggregates (:mod:`pipelines.report.scan` for the published samples, :mod:`pipelines.report.decisions` for
the decisions and timings tables) and returns the JSON-ready section; inputs that are absent give a
section that says so instead of failing. Where a figure is computed on a bounded sample rather than on
every row, the entry says how many rows it used (``n_used``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from pipelines.report import metrics as M
from pipelines.report.alignment import JudgeResult
from pipelines.report.data import DUPSIM, REFSIM, Dataset
from pipelines.report.decisions import DecisionStats, TimingStats
from pipelines.report.scan import SampleScan
from pipelines.report.settings import FLAGGED_SHOWN, JUDGE_PER_GROUP, N_BOOT, NEAR_DUP_COS, PERCEIVED_ORDER, SEED
from pipelines.report.stream import IdList, ScoreStats


def _median_mean(st: ScoreStats) -> dict[str, float] | None:
    """Median and mean of a timing column (the median from the sample beyond its size)."""
    v = st.values()
    if not v.size:
        return None
    if not st.truncated:
        return {"median": float(np.median(v)), "mean": float(v.mean())}
    return {"median": float(np.median(v)), "mean": st.mean, "n_used": int(v.size)}


def summary_section(ds: Dataset, dec: DecisionStats | None, tim: TimingStats | None,
                    scan: SampleScan) -> dict[str, Any]:
    prov = ds.provenance
    counts = dict(ds.index.get("counts") or prov.get("counts") or {})
    if dec is not None:
        rejections, flags_on_kept = dec.rejections, dec.flags_on_kept
    else:
        rejections, flags_on_kept = Counter(prov.get("rejections") or {}), Counter()
    stage = {k: float(v) for k, v in (prov.get("stage_seconds") or {}).items()}
    out: dict[str, Any] = {
        "job": prov.get("job") or ds.index.get("job") or {},
        "description": (prov.get("job_spec") or {}).get("description"),
        "code_version": prov.get("code_version"),
        "started": prov.get("started"), "finished": prov.get("finished"),
        "models": {k: {kk: vv for kk, vv in (v or {}).items()}
                   for k, v in (prov.get("models") or {}).items()},
        "counts": counts,
        "rejections": dict(sorted(rejections.items())),
        "flags_on_kept": dict(sorted(flags_on_kept.items())),
        "stage_seconds": stage,
        "published_samples": scan.n,
        "groups": len(scan.kept),
    }
    wall = next((v for k, v in stage.items() if k.startswith("generate") and "wall" in k), None)
    generated = None
    if tim is not None:
        generated = tim.rows
        per: dict[str, Any] = {}
        for col in ("gen_ms", "clip_ms"):
            mm = _median_mean(getattr(tim, col)) if col in tim.columns else None
            if mm:
                per[col] = mm
        if "gen_worker" in tim.columns:
            per["workers"] = len(tim.workers)
        out["per_sample"] = per
    out["throughput"] = {"generated": generated, "wall_seconds": wall,
                         "images_per_s": (generated / wall) if generated and wall else None}
    return out


def _shares_ci(counts: Counter, categories: list[str] | None = None) -> dict[str, Any]:
    cats = None if categories is None else categories + sorted(set(k for k, v in counts.items() if v) - set(categories))
    return M.proportions_from_counts(counts, cats, N_BOOT, seed=SEED)


def _uniformity(counts: Counter, categories: list[str] | None) -> dict[str, Any]:
    """The uniformity test of one group's labels over the attribute's vocabulary (all K values, also the
    ones never seen); without a vocabulary, over the values observed."""
    cats = categories if categories is not None else sorted(k for k, v in counts.items() if v)
    return M.uniformity_test([counts.get(c, 0) for c in cats]) | {
        "categories": cats, "vocabulary": "curation.json" if categories is not None else "observed values only"}


def _vocabulary(ds: Dataset) -> dict[str, list[str]]:
    """attribute -> its zero-shot values, from curation.json's audit entries (absent: {})."""
    out: dict[str, list[str]] = {}
    cur = ds.curation if isinstance(ds.curation, dict) else {}
    for stage in cur.get("stages") or []:
        for e in (stage.get("audit") or []) if isinstance(stage, dict) else []:
            if isinstance(e, dict) and isinstance(e.get("values"), list):
                out.setdefault(str(e.get("attribute")), [str(v) for v in e["values"]])
    return out


def perceived_section(groups: list[str], scan: SampleScan, ds: Dataset, dec: DecisionStats | None,
                      jr: JudgeResult) -> tuple[dict[str, Any], str | None]:
    """(per group: attribute shares with intervals and, for curation's labels, the uniformity test that
    decides whether the group is skewed; the sentence naming where they come from).

    The curation's zero-shot labels of every generated sample (before and after curation; counted over all
    rows) and/or the judge's verdicts on published samples (rejected images are not published)."""
    perceived: dict[str, Any] = {}
    sources = []
    if dec is not None and dec.label_columns:
        sources.append("CLIP zero-shot labels written by curation (decisions.parquet: "
                       + ", ".join(sorted(dec.label_columns)) + "), all generated samples (before) and the kept ones (after)")
        vocab = _vocabulary(ds)
        for g in groups:
            b, a = sorted(dec.before.get(g, {}).items()), sorted(dec.after.get(g, {}).items())
            perceived[g] = {"before": {k: _shares_ci(v, vocab.get(k)) for k, v in b},
                            "after": {k: _shares_ci(v, vocab.get(k)) for k, v in a},
                            "uniformity": {"before": {k: _uniformity(v, vocab.get(k)) for k, v in b},
                                           "after": {k: _uniformity(v, vocab.get(k)) for k, v in a}}}
    if jr.available:
        sources.append(f"the toy-world judge on up to {JUDGE_PER_GROUP} published samples per group")
        judged: dict[str, list[int]] = {}
        for i, p in enumerate(scan.judge):
            if i in jr.verdicts:
                judged.setdefault(p.group, []).append(i)
        for g in groups:
            rows = judged.get(g, [])
            keys = [k for k in PERCEIVED_ORDER if any(k in jr.verdicts[i] for i in rows)]
            spec_keys = set(scan.group_attrs.get(g, {}))
            keys = sorted(keys, key=lambda k: (k not in spec_keys, PERCEIVED_ORDER.index(k)))
            dist = {k: _shares_ci(Counter(jr.verdicts[i].get(k, "unknown") for i in rows)) for k in keys}
            perceived.setdefault(g, {})["judge"] = dist
            perceived[g]["judged"] = len(rows)
    return perceived, "; ".join(sources) or None


def metrics_error(e: M.NonFiniteError, bad: dict[str, list[str]]) -> str:
    """The sentence a section shows instead of a number: the error and the sample ids behind it."""
    def named(ids: list[str]) -> str:
        total = getattr(ids, "total", len(ids))
        return f"{', '.join(ids[:20])}{f' and {total - 20} more' if total > 20 else ''}"

    parts = [f"{named(ids)} ({what})" for what, ids in sorted(bad.items()) if ids]
    return f"not computed: {e}" + (f"; non-finite values in samples {'; '.join(parts)}" if parts else "")


def _near_duplicates(groups: list[str], scan: SampleScan) -> dict[str, Any]:
    """Samples with a same-group neighbour at cosine >= NEAR_DUP_COS, within each group's embedding sample."""
    pairs = used = 0
    truncated = False
    for g in groups:
        res = scan.emb_by_group.get(g)
        if res is None:
            continue
        emb = M.normalise(res.result()[1])
        used += len(emb)
        truncated |= res.truncated
        if len(emb) > 1:
            sim, _ = M.top1_cosine(emb, emb, exclude_self=True)
            pairs += int((sim >= NEAR_DUP_COS).sum())
    out = {"threshold_cosine": NEAR_DUP_COS, "samples_with_near_duplicate_in_group": pairs,
           "rate": pairs / max(used, 1)}
    return out | ({"n_used": used, "note": "counted within each group's deterministic sample of embeddings: a "
                                             "neighbour outside it is not seen, so the rate is a lower bound"}
                  if truncated else {})


def diversity_section(ds: Dataset, groups: list[str], scan: SampleScan, dec: DecisionStats | None) -> dict[str, Any]:
    out: dict[str, Any] = {"vendi": {"available": scan.has_img_emb,
                                     "definition": "exp(entropy of eigenvalues of K/n), K = cosine kernel of "
                                                   "L2-normalised CLIP image embeddings; 1 = all identical, "
                                                   "n = all orthogonal"}}
    near: dict[str, Any] = {}
    bad = scan.nonfinite().get("image_emb")
    if bad:  # every number below would be wrong or an error: say which samples instead
        e = M.NonFiniteError("image embeddings", scan.bad_img_rows, scan.n, bad.total)
        out["vendi"] |= {"available": False, "non_finite_samples": bad,
                         "note": "Vendi score and residual near duplicates " + metrics_error(e, {"image_emb": bad})}
    elif scan.has_img_emb:
        sample = scan.emb_all.result()[1]
        emb = M.normalise(sample)
        out["vendi"]["overall"] = {"n": scan.n, "score": M.vendi_score(emb, normalised=True),
                                   "embedding_dim": int(emb.shape[1])} | (
            {"n_used": len(emb)} if scan.emb_all.truncated else {})
        per_group = {}
        for g in groups:
            res = scan.emb_by_group.get(g)
            ge = M.normalise(res.result()[1]) if res is not None else np.zeros((0, emb.shape[1]))
            per_group[g] = {"n": scan.kept.get(g, 0), "score": M.vendi_score(ge, normalised=True)} | (
                {"n_used": len(ge)} if res is not None and res.truncated else {})
        out["vendi"]["per_group"] = per_group
        near = _near_duplicates(groups, scan)
    dups: dict[str, Any] = {
        "residual_exact_pixel_duplicates": {"count": scan.pixel_repeats, "rate": scan.pixel_repeats / max(scan.n, 1)},
        "residual_near_duplicates": near,
    }
    if dec is not None:
        n = dec.rows
        dups["rejected_by_method"] = {r: {"count": c, "rate": c / max(n, 1)} for r, c in sorted(dec.dup_reasons.items())}
        dups["decisions_rows"] = n
        dups["similarity_scores"] = {k: dec.scores[k].summary(seed=SEED) for k in sorted(dec.scores)
                                     if DUPSIM.search(k) and not REFSIM.search(k)}
    else:
        dups["note"] = "decisions.parquet absent: curation rejections by method unknown"
    out["duplicates"] = dups
    return out


def _safety_thresholds(ds: Dataset) -> dict[str, float]:
    cur = ds.curation if isinstance(ds.curation, dict) else {}
    out = {}
    for c in ((cur.get("safety") or {}).get("concepts") or []):
        if isinstance(c, dict) and isinstance(c.get("threshold"), (int, float)):
            out[str(c.get("name"))] = float(c["threshold"])
    return out


def safety_section(ds: Dataset, dec: DecisionStats | None, scan: SampleScan) -> tuple[dict[str, Any], list[str]]:
    """(json section, the flagged published samples the HTML shows, in decisions order)."""
    if dec is None:
        return {"available": False, "note": "decisions.parquet absent"}, []
    cols = dec.safety_columns()
    if not cols and not dec.flagged:
        return {"available": False, "note": "no safety scores or flags in decisions.parquet (image-safety "
                                            "screening was not run)"}, []
    thr = _safety_thresholds(ds)
    listed = dec.listed_flagged()
    out = {"available": True, "mode": ((ds.curation or {}).get("safety") or {}).get("mode")
           if isinstance(ds.curation, dict) else None,
           "thresholds": {k: thr.get(k.rsplit(".", 1)[-1]) for k in cols},
           "scores": {k: dec.scores[k].summary(seed=SEED) for k in cols},
           "flagged": dec.flagged, "flagged_kept": dec.flagged_kept, "flagged_samples": listed}
    if len(listed) < dec.flagged:
        out["flagged_samples_listed"] = f"the first {len(listed)} of {dec.flagged}, in decisions order"
    shown = [s for s in dec.show_candidates() if s in scan.found][:FLAGGED_SHOWN]
    return out, shown


def nonfinite_samples(scan: SampleScan) -> dict[str, IdList]:
    """Published samples whose image/text embedding or CLIP score holds NaN or inf, by input."""
    return scan.nonfinite()
