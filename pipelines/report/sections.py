"""The audit report's per-dataset sections that need no model: summary (counts, rejections, timings),
planned vs published per group, perceived attributes per group, diversity and residual duplicates, and
safety. Each takes what :mod:`pipelines.report.data` read and returns the JSON-ready section; inputs that
are absent give a section that says so instead of failing."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from pipelines.report import metrics as M
from pipelines.report.alignment import JudgeResult
from pipelines.report.data import DUPSIM, REFSIM, SAFETY, Dataset, DecisionView, attr_name, not_none
from pipelines.report.settings import FLAGGED_SHOWN, JUDGE_PER_GROUP, N_BOOT, NEAR_DUP_COS, PERCEIVED_ORDER, SEED


def summary_section(ds: Dataset, dv: DecisionView | None) -> dict[str, Any]:
    prov = ds.provenance
    counts = dict(ds.index.get("counts") or prov.get("counts") or {})
    if dv is not None:
        rejections = Counter(r for k, rs in zip(dv.kept, dv.reasons) if not k for r in (rs or ["(no reason)"]))
        flags_on_kept = Counter(f for k, rs, fs in zip(dv.kept, dv.reasons, dv.flag_lists) if k for f in rs + fs)
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
        "published_samples": len(ds.samples.ids),
        "groups": len(set(ds.samples.group)),
    }
    wall = next((v for k, v in stage.items() if k.startswith("generate") and "wall" in k), None)
    generated = None
    if ds.timings is not None and "sample_id" in ds.timings.column_names:
        generated = ds.timings.num_rows
        t = ds.timings
        per = {}
        for col in ("gen_ms", "clip_ms"):
            if col in t.column_names:
                v = np.asarray(not_none(t.column(col).to_pylist()), np.float64)
                if v.size:
                    per[col] = {"median": float(np.median(v)), "mean": float(v.mean())}
        if "gen_worker" in t.column_names:
            per["workers"] = len(set(t.column("gen_worker").to_pylist()))
        out["per_sample"] = per
    out["throughput"] = {"generated": generated, "wall_seconds": wall,
                         "images_per_s": (generated / wall) if generated and wall else None}
    return out


def planned_by_group(dec_groups: list[str | None]) -> Counter[str]:
    """Samples generated per prompt group (all decisions rows, kept or not)."""
    return Counter(g for g in dec_groups if g is not None)


def _shares_ci(values: list[str], categories: list[str] | None = None) -> dict[str, Any]:
    cats = None if categories is None else categories + sorted(set(values) - set(categories))
    return M.proportions_ci(values, cats, N_BOOT, seed=SEED)


def _uniformity(values: list[str], categories: list[str] | None) -> dict[str, Any]:
    """The uniformity test of one group's labels over the attribute's vocabulary (all K values, also the
    ones never seen); without a vocabulary, over the values observed."""
    cats = categories if categories is not None else sorted(set(values))
    return M.uniformity_test([values.count(c) for c in cats]) | {
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


def perceived_section(groups: list[str], by_group: dict[str, list[int]], ds: Dataset, dv: DecisionView | None,
                      dec_groups: list[str | None], jr: JudgeResult) -> tuple[dict[str, Any], str | None]:
    """(per group: attribute shares with intervals and, for curation's labels, the uniformity test that
    decides whether the group is skewed; the sentence naming where they come from).

    The curation's zero-shot labels of every generated sample (before and after curation) and/or the judge's
    verdicts on published samples (rejected images are not published)."""
    perceived: dict[str, Any] = {}
    sources = []
    if dv is not None and dv.labels:
        before, after = _labels_by_group(dv, dec_groups)
        sources.append("CLIP zero-shot labels written by curation (decisions.parquet: " + ", ".join(sorted(dv.labels))
                       + "), all generated samples (before) and the kept ones (after)")
        vocab = _vocabulary(ds)
        for g in groups:
            b, a = sorted(before.get(g, {}).items()), sorted(after.get(g, {}).items())
            perceived[g] = {"before": {k: _shares_ci(v, vocab.get(k)) for k, v in b},
                            "after": {k: _shares_ci(v, vocab.get(k)) for k, v in a},
                            "uniformity": {"before": {k: _uniformity(v, vocab.get(k)) for k, v in b},
                                           "after": {k: _uniformity(v, vocab.get(k)) for k, v in a}}}
    if jr.available:
        sources.append(f"the toy-world judge on up to {JUDGE_PER_GROUP} published samples per group")
        for g in groups:
            rows = [i for i in by_group[g] if i in jr.verdicts]
            keys = [k for k in PERCEIVED_ORDER if any(k in jr.verdicts[i] for i in rows)]
            spec_keys = set(ds.group_attrs.get(g, {}))
            keys = sorted(keys, key=lambda k: (k not in spec_keys, PERCEIVED_ORDER.index(k)))
            dist = {k: _shares_ci([jr.verdicts[i].get(k, "unknown") for i in rows]) for k in keys}
            perceived.setdefault(g, {})["judge"] = dist
            perceived[g]["judged"] = len(rows)
    return perceived, "; ".join(sources) or None


def _labels_by_group(dv: DecisionView, dec_groups: list[str | None]) -> \
        tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, list[str]]]]:
    """Per group and attribute, labels of all generated samples (before) and the kept ones (after), from
    string label columns the curation wrote into decisions.parquet."""
    before: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    after: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for col, vals in dv.labels.items():
        attr = attr_name(col)
        for i, v in enumerate(vals):
            g = dec_groups[i]
            if v is None or g is None:
                continue
            before[g][attr].append(v)
            if dv.kept[i]:
                after[g][attr].append(v)
    return before, after


def nonfinite_samples(ds: Dataset) -> dict[str, list[str]]:
    """Published samples whose image/text embedding or CLIP score holds NaN or inf, by input."""
    s = ds.samples
    out = {name: [s.ids[i] for i in M.nonfinite_rows(a)]
           for name, a in (("image_emb", s.img_emb), ("text_emb", s.txt_emb)) if a is not None and len(a)}
    out["clip_score"] = [s.ids[i] for i in M.nonfinite_rows(np.asarray(s.clip, np.float64))]  # NaN: none recorded
    return {k: v for k, v in out.items() if v}


def metrics_error(e: M.NonFiniteError, bad: dict[str, list[str]]) -> str:
    """The sentence a section shows instead of a number: the error and the sample ids behind it."""
    parts = [f"{', '.join(ids[:20])}{f' and {len(ids) - 20} more' if len(ids) > 20 else ''} ({what})"
             for what, ids in sorted(bad.items()) if ids]
    return f"not computed: {e}" + (f"; non-finite values in samples {'; '.join(parts)}" if parts else "")


def diversity_section(ds: Dataset, groups: list[str], by_group: dict[str, list[int]],
                      dv: DecisionView | None) -> dict[str, Any]:
    s = ds.samples
    out: dict[str, Any] = {"vendi": {"available": s.img_emb is not None,
                                     "definition": "exp(entropy of eigenvalues of K/n), K = cosine kernel of "
                                                   "L2-normalised CLIP image embeddings; 1 = all identical, "
                                                   "n = all orthogonal"}}
    near: dict[str, Any] = {}
    bad = nonfinite_samples(ds).get("image_emb")
    if bad:  # every number below would be wrong or an error: say which samples instead
        e = M.NonFiniteError("image embeddings", M.nonfinite_rows(s.img_emb), len(s.ids))
        out["vendi"] |= {"available": False, "non_finite_samples": bad,
                         "note": "Vendi score and residual near duplicates " + metrics_error(e, {"image_emb": bad})}
    elif s.img_emb is not None and len(s.ids):
        emb = M.normalise(s.img_emb)
        out["vendi"]["overall"] = {"n": len(s.ids), "score": M.vendi_score(emb, normalised=True),
                                   "embedding_dim": int(emb.shape[1])}
        out["vendi"]["per_group"] = {g: {"n": len(by_group[g]),
                                         "score": M.vendi_score(emb[by_group[g]], normalised=True)}
                                     for g in groups}
        pairs = 0
        for g in groups:
            rows = by_group[g]
            if len(rows) > 1:
                sim, _ = M.top1_cosine(emb[rows], emb[rows], exclude_self=True)
                pairs += int((sim >= NEAR_DUP_COS).sum())
        near = {"threshold_cosine": NEAR_DUP_COS, "samples_with_near_duplicate_in_group": pairs,
                "rate": pairs / len(s.ids)}
    pix = Counter(p for p in s.pixel if p)
    exact = sum(c - 1 for c in pix.values() if c > 1)
    dups: dict[str, Any] = {
        "residual_exact_pixel_duplicates": {"count": exact, "rate": exact / max(len(s.ids), 1)},
        "residual_near_duplicates": near,
    }
    if dv is not None:
        n = len(dv.sample_ids)
        by_reason = Counter(r for k, rs in zip(dv.kept, dv.reasons) for r in rs if DUPSIM.search(r) or "dup" in r)
        dups["rejected_by_method"] = {r: {"count": c, "rate": c / max(n, 1)} for r, c in sorted(by_reason.items())}
        dups["decisions_rows"] = n
        dups["similarity_scores"] = {k: M.summary(not_none(vals), seed=SEED)
                                     for k, vals in sorted(dv.scores.items())
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


def safety_section(ds: Dataset, dv: DecisionView | None, idx_of: dict[str, int]) -> tuple[dict[str, Any], list[int]]:
    """(json section, sample rows of the flagged samples the HTML shows)."""
    if dv is None:
        return {"available": False, "note": "decisions.parquet absent"}, []
    cols = {k: v for k, v in dv.scores.items() if SAFETY.search(k)}
    flag_cols = {k: v for k, v in dv.flags.items() if SAFETY.search(k)}
    flagged = [i for i in range(len(dv.sample_ids))
               if any(SAFETY.search(r) for r in dv.reasons[i] + dv.flag_lists[i])
               or any(v[i] for v in flag_cols.values())]
    if not cols and not flagged:
        return {"available": False, "note": "no safety scores or flags in decisions.parquet (image-safety "
                                            "screening was not run)"}, []
    thr = _safety_thresholds(ds)
    out = {"available": True, "mode": ((ds.curation or {}).get("safety") or {}).get("mode")
           if isinstance(ds.curation, dict) else None,
           "thresholds": {k: thr.get(k.rsplit(".", 1)[-1]) for k in sorted(cols)},
           "scores": {k: M.summary(not_none(v), seed=SEED) for k, v in sorted(cols.items())},
           "flagged": len(flagged), "flagged_kept": sum(dv.kept[i] for i in flagged),
           "flagged_samples": [{"sample_id": dv.sample_ids[i], "kept": dv.kept[i],
                                "reasons": dv.reasons[i] + dv.flag_lists[i],
                                "scores": {k: v[i] for k, v in sorted(cols.items())}} for i in flagged]}
    shown = [idx_of[dv.sample_ids[i]] for i in flagged if dv.sample_ids[i] in idx_of][:FLAGGED_SHOWN]
    return out, shown
