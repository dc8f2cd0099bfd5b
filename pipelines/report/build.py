"""The audit report of a published dataset: one self-contained HTML file plus ``report.json``.

Reads only what a published dataset holds (``index.json`` or, at publish time, the index about to be
written; ``provenance.json``, ``decisions.parquet``, ``manifest.parquet``, ``timings.parquet``,
``embeddings/``, shards, optional ``curation.json``), through :class:`~pipelines.io.store.Store`, so any
fsspec URL works. Memory is flat in the number of samples apart from the embeddings (n x d float32) and a
few scalars per sample: shards are streamed one at a time, and only the images the report shows or
judges (a fixed number per prompt group) are kept.

Sections whose inputs are absent (no curation scores, no reference set, no judge-readable prompts) say
so instead of failing. Every number the HTML shows is in ``report.json``, which is deterministic: the
same dataset (and reference) gives byte-identical JSON (fixed seeds, deterministic subsets, floats
rounded to 6 significant digits).

Sections (HTML ids): ``summary``, ``groups``, ``alignment``, ``diversity``, ``reference``, ``safety``,
``curation``, ``methods``.

This module is the entry point (build, publish, write); the work is in
``report_data`` (reading), ``report_reference``, ``report_alignment``, ``report_sections``,
``report_curation`` (the sections), ``report_plots`` (figures) and ``report_settings``. Their names are
re-exported here, so ``pipelines.report.build`` keeps its interface.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.report import metrics as M
from pipelines.report.alignment import JudgeResult, alignment_section, run_judge, zero_shot
from pipelines.report.curation import curation_section
from pipelines.report.radiology import qc_section
from pipelines.report.data import (
    KNOWN_DECISION_COLUMNS,
    Dataset,
    DecisionView,
    Samples,
    ShardFiles,
    decision_groups,
    decision_view,
    group_key,
    iter_records,
    load_dataset,
    read_json,
    read_pngs,
)
from pipelines.report.plots import bar_h as _bar_h
from pipelines.report.plots import curation_plots, fmt, get_plt, png_thumb, safety_plots, section_plots
from pipelines.report.plots import group_attr_plot as _group_attr_plot
from pipelines.report.plots import hist as _hist
from pipelines.report.plots import rates_plot as _rates_plot
from pipelines.report.reference import IMAGE_EXT, Reference, load_reference, reference_section
from pipelines.report.sections import diversity_section, perceived_section, planned_by_group, safety_section, summary_section
from pipelines.report.sections import metrics_error, nonfinite_samples
from pipelines.report.settings import (
    CLOSEST_PAIRS,
    DIST_SAMPLE,
    FD_SAMPLE,
    FLAGGED_SHOWN,
    GRID_PER_GROUP,
    JUDGE_PER_GROUP,
    MAX_ATTRS_PLOTTED,
    MAX_GROUPS_SHOWN,
    MEMO_THRESHOLD,
    N_BOOT,
    NEAR_DUP_COS,
    PERCEIVED_ORDER,
    REF_MAX,
    REPORT_FORMAT,
    REPORT_VERSION,
    SEED,
    THUMB_MAX,
    ReportError,
)
from pipelines.errors import SynthgenError
from pipelines.io.store import Store

_plt, _png_thumb = get_plt, png_thumb  # the names tests and older callers use

__all__ = [
    "CLOSEST_PAIRS", "DIST_SAMPLE", "FD_SAMPLE", "FLAGGED_SHOWN", "GRID_PER_GROUP", "IMAGE_EXT", "JUDGE_PER_GROUP",
    "KNOWN_DECISION_COLUMNS", "MAX_ATTRS_PLOTTED", "MAX_GROUPS_SHOWN", "MEMO_THRESHOLD", "N_BOOT", "NEAR_DUP_COS",
    "PERCEIVED_ORDER", "REF_MAX", "REPORT_FORMAT", "REPORT_VERSION", "SEED", "THUMB_MAX", "Dataset", "DecisionView",
    "JudgeResult", "Reference", "ReportError", "Samples", "ShardFiles", "build_report", 
    "decision_view", "group_key", "iter_records", "load_dataset", "load_reference", "main", "publish_report",
    "read_pngs", "report_bytes", "write_report",
    # private names kept for the tests and older callers
    "_bar_h", "_group_attr_plot", "_hist", "_plt", "_png_thumb", "_rates_plot", "_select",
]


def _clean(obj: Any) -> Any:
    """JSON-safe and deterministic: floats to 6 significant digits, NaN/inf to null, numpy to python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            return None
        return float(f"{f:.6g}")
    return obj


def _select(ids: list[int], sample_ids: list[str], salt: str, k: int) -> list[int]:
    """Deterministic, content-independent choice of k samples: lowest sha256(salt|sample_id)."""
    def rank(i: int) -> str:
        return hashlib.sha256(f"{salt}|{sample_ids[i]}".encode()).hexdigest()

    return sorted(sorted(ids, key=rank)[:k], key=lambda i: sample_ids[i])


def _settings() -> dict[str, Any]:
    return {"grid_per_group": GRID_PER_GROUP, "judge_per_group": JUDGE_PER_GROUP,
            "dist_sample": DIST_SAMPLE, "fd_sample": FD_SAMPLE, "reference_max": REF_MAX,
            "memorisation_threshold": MEMO_THRESHOLD, "near_duplicate_cosine": NEAR_DUP_COS,
            "prdc_k": M.PRDC_K, "cmmd_sigma": M.CMMD_SIGMA, "cmmd_scale": M.CMMD_SCALE,
            "bootstrap": {"resamples": N_BOOT, "level": 0.95, "seed": SEED}}


def _load_reference(ds: Dataset, reference: str | None, options: dict[str, Any] | None,
                    strict: bool) -> tuple[Reference | None, str | None]:
    """(reference, why it is absent): an unreadable one is an error only with ``strict``."""
    if not reference:
        return None, None
    try:
        return load_reference(reference, options, (ds.provenance.get("job_spec") or {}).get("clip")), None
    except (ReportError, SynthgenError, OSError, ValueError) as e:
        if strict:
            raise ReportError(f"reference set {reference!r} could not be read: {e}") from e
        return None, f"reference set {reference!r} could not be read: {e}"


def build_report(store: Store, reference: str | None = None, *, index: dict[str, Any] | None = None,
                 reference_options: dict[str, Any] | None = None,
                 strict_reference: bool = False) -> tuple[dict[str, Any], str]:
    """(report.json content, HTML) for the dataset at ``store``. ``index``: the index about to be written
    (publish calls this before ``index.json`` exists); otherwise ``index.json`` is read. An unreadable
    ``reference`` is an error with ``strict_reference``, else the reference section says why it is empty."""
    ds = load_dataset(store, index)
    s = ds.samples
    dv = decision_view(ds.decisions)
    idx_of = {sid: i for i, sid in enumerate(s.ids)}
    by_group = s.rows_by_group()
    dec_groups = decision_groups(ds, dv, idx_of) if dv is not None else []
    planned = planned_by_group(dec_groups)
    groups = sorted(set(by_group) | set(planned))

    # reference first: it decides which images the closest-pair view needs
    ref, ref_error = _load_reference(ds, reference, reference_options, strict_reference)
    try:
        ref_json, ref_extra = reference_section(ds, ref, ref_error, dv)
    except M.NonFiniteError as e:  # NaN/inf embeddings: the section names the samples instead of numbers
        bad = {k: v for k, v in nonfinite_samples(ds).items() if k == "image_emb"} | (
            {"reference": [ref.ids[i] for i in M.nonfinite_rows(ref.emb)]}
            if ref is not None and M.nonfinite_rows(ref.emb) else {})
        ref_json, ref_extra = {"available": False, "note": "Reference metrics " + metrics_error(e, bad),
                               "non_finite_samples": bad}, {}
    safety_json, flagged_rows = safety_section(ds, dv, idx_of)

    # the images the report shows or judges, read in one pass over the shards
    grid = {g: _select(by_group[g], s.ids, "grid", GRID_PER_GROUP) for g in groups}
    judge_rows = sorted(i for g in groups for i in _select(by_group[g], s.ids, "judge", JUDGE_PER_GROUP))
    pair_rows = [p[0] for p in ref_extra.get("pairs", [])]
    shown_groups = groups[:MAX_GROUPS_SHOWN]
    thumb_rows = set(pair_rows) | set(flagged_rows) | {i for g in shown_groups for i in grid[g]}
    need = thumb_rows | set(judge_rows)
    pngs: dict[int, bytes] = {}
    for sh in ds.shards:
        ids_here = {s.ids[i] for i in need if s.shard[i] == sh.no}
        pngs |= {idx_of[k]: v for k, v in read_pngs(store, sh, ids_here).items()}
    thumbs = {i: png_thumb(pngs[i]) for i in sorted(thumb_rows) if i in pngs}
    jr = run_judge({i: pngs[i] for i in judge_rows if i in pngs}, s.prompt)
    try:
        zs = zero_shot(ds, sorted(jr.verdicts), jr.plugin) if jr.available else ({}, "")
    except M.NonFiniteError as e:
        zs = ({}, "CLIP zero-shot labels " + metrics_error(e, {k: v for k, v in nonfinite_samples(ds).items()
                                                               if k == "image_emb"}))
    del pngs

    perceived, source = perceived_section(groups, by_group, ds, dv, dec_groups, jr)
    plt = get_plt()
    summary = summary_section(ds, dv)
    try:
        alignment = alignment_section(ds, groups, by_group, jr, zs)
    except M.NonFiniteError as e:  # the judge-vs-CLIPScore numbers need finite scores: name the samples
        bad = {k: v for k, v in nonfinite_samples(ds).items() if k == "clip_score"}
        alignment = alignment_section(ds, groups, by_group, JudgeResult(False), ({}, ""))
        alignment["judge"] |= {"note": "judge agreement and CLIPScore AUC " + metrics_error(e, bad),
                               "non_finite_samples": bad}
    diversity = diversity_section(ds, groups, by_group, dv)
    curation = curation_section(ds)
    finding_qc = qc_section(ds)

    group_rows = [{
        "group": g, "attributes": ds.group_attrs.get(g, {}), "planned": planned.get(g),
        "kept": len(by_group[g]), "clipscore": alignment["clipscore"]["per_group"][g],
        "vendi": (diversity["vendi"].get("per_group") or {}).get(g),
        "judge_all_correct": (alignment["judge"].get("per_group_all_specified_correct") or {}).get(g),
        "grid": [s.ids[i] for i in grid[g]],
        "perceived": perceived.get(g),
    } for g in groups]
    report = _clean({
        "format": REPORT_FORMAT, "version": REPORT_VERSION, "settings": _settings(), "summary": summary,
        "groups": {"count": len(groups), "perceived_source": source, "rows": group_rows},
        "alignment": alignment, "diversity": diversity, "reference": ref_json, "safety": safety_json,
        "curation": curation, "finding_qc": finding_qc,
    })

    # ---- HTML
    plots = section_plots(plt, ds, dv, shown_groups, by_group, summary, alignment, diversity, ref_extra)
    safety_figs = safety_plots(plt, dv, safety_json)
    group_plots = {row["group"]: _group_attr_plot(plt, row["perceived"])
                   for row in report["groups"]["rows"][:MAX_GROUPS_SHOWN] if row.get("perceived")}
    cur_plots = curation_plots(plt, curation)

    pairs_view = []
    if ref is not None and ref_extra.get("pairs"):
        ref_png = ref.pngs([p[1] for p in ref_extra["pairs"]])
        for gi, ri, cos in ref_extra["pairs"]:
            pairs_view.append({"sample_id": s.ids[gi], "reference_id": ref.ids[ri], "cosine": cos,
                               "gen": thumbs.get(gi), "ref": png_thumb(ref_png[ri]) if ri in ref_png else None})
    flagged_view = [{"sample_id": s.ids[i], "img": thumbs.get(i)} for i in flagged_rows]
    grids = {g: [{"sample_id": s.ids[i], "clip": s.clip[i], "prompt": s.prompt[i], "img": thumbs.get(i)}
                 for i in grid[g]] for g in shown_groups}
    html = _render(r=report, plots=plots, group_plots=group_plots, grids=grids, pairs=pairs_view,
                   flagged=flagged_view, safety_plots=safety_figs, cur_plots=cur_plots, shown_groups=shown_groups,
                   max_groups=MAX_GROUPS_SHOWN, M=M, settings=report["settings"])
    return report, html


def _render(**context: Any) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    return env.get_template("report.html.j2").render(**context)


def report_bytes(report: dict[str, Any], html: str) -> tuple[bytes, bytes]:
    return (json.dumps(report, indent=1, sort_keys=True, allow_nan=False) + "\n").encode(), html.encode()


def publish_report(store: Store, index: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Build the report of a dataset being published and write ``report.json`` / ``report.html`` at its
    root; returns their index entries (sha256, bytes). Called before ``index.json`` is written."""
    report, html = build_report(store, index=index)
    out = {}
    for key, data in zip(("report.json", "report.html"), report_bytes(report, html)):
        store.write_bytes(key, data)
        out[key] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return out


def write_report(dataset_url: str, out: str, reference: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> tuple[str, str, dict[str, Any]]:
    """``synthgen report``: build the report of a published dataset and write ``out`` (HTML) and the JSON
    beside it (same name, ``.json``). Returns (html url, json url, report)."""
    report, html = build_report(Store(dataset_url, storage_options), reference,
                                reference_options=storage_options, strict_reference=True)
    js, hb = report_bytes(report, html)
    root, _, name = out.rstrip("/").rpartition("/")
    stem = name[:-5] if name.endswith(".html") else name
    html_name = name if name.endswith(".html") else f"{name}.html"
    target = Store(root or ".", storage_options)
    target.write_bytes(html_name, hb)
    target.write_bytes(f"{stem}.json", js)
    base = (root + "/") if root else ""
    return f"{base}{html_name}", f"{base}{stem}.json", report
