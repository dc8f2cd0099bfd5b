"""The audit report of a published dataset: one self-contained HTML file plus ``report.json``.

Reads only what a published dataset holds (``index.json`` or, at publish time, the index about to be
written; ``provenance.json``, ``decisions.parquet``, ``manifest.parquet``, ``timings.parquet``,
``embeddings/``, shards, optional ``curation.json``), through :class:`~pipelines.io.store.Store`, so any
fsspec URL works. Nothing per sample is held: the decisions and timings parts are streamed a batch at a
time and the shards one at a time (records and embeddings) into aggregates (:mod:`~pipelines.report.decisions`,
:mod:`~pipelines.report.scan`); counts and means are exact, quantiles, histograms, bootstrap intervals and
embedding metrics use bounded deterministic samples (the rows with the lowest sha256 of the sample id;
sizes in ``settings``, and ``n_used`` beside a figure computed on fewer rows than it describes), and only
the images the report shows or judges (a fixed number per prompt group) are read. While a dataset is no
larger than those samples every figure is computed from all its rows.

Sections whose inputs are absent (no curation scores, no reference set, no judge-readable prompts) say
so instead of failing. Every number the HTML shows is in ``report.json``, which is deterministic: the
same dataset (and reference) gives byte-identical JSON (fixed seeds, deterministic subsets, floats
rounded to 6 significant digits).

Sections (HTML ids): ``summary``, ``groups``, ``alignment``, ``diversity``, ``reference``, ``safety``,
``curation``, ``methods``.

This module is the entry point (build, publish, write); the work is in ``data`` (reading), ``decisions``
and ``scan`` (the streamed passes), ``reference``, ``alignment``, ``sections``, ``curation``, ``radiology``
(the sections), ``plots`` (figures) and ``settings``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import SynthgenError
from pipelines.io.store import Store
from pipelines.report import metrics as M
from pipelines.report.alignment import JudgeResult, alignment_section, judge_image, judge_result, judge_setup, zero_shot
from pipelines.report.curation import curation_section
from pipelines.report.data import KNOWN_DECISION_COLUMNS, Dataset, ShardFiles, group_key, iter_records, load_dataset
from pipelines.report.data import read_json, read_pngs
from pipelines.report.decisions import read_decisions, read_timings
from pipelines.report.plots import bar_h as _bar_h
from pipelines.report.plots import curation_plots, fmt, get_plt, png_thumb, safety_plots, section_plots
from pipelines.report.plots import group_attr_plot as _group_attr_plot
from pipelines.report.plots import hist as _hist
from pipelines.report.plots import rates_plot as _rates_plot
from pipelines.report.radiology import qc_section
from pipelines.report.targets import quota_section
from pipelines.report.reference import IMAGE_EXT, Reference, load_reference, reference_section
from pipelines.report.scan import SampleScan, published_prompt_groups
from pipelines.report.sections import diversity_section, metrics_error, perceived_section, safety_section
from pipelines.report.sections import summary_section
from pipelines.report.settings import (
    CLOSEST_PAIRS,
    DIST_SAMPLE,
    EMB_PER_GROUP,
    FD_SAMPLE,
    FLAGGED_LISTED,
    FLAGGED_SHOWN,
    GRID_PER_GROUP,
    GROUP_SCORE_SAMPLE,
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
    SCORE_SAMPLE,
    SEED,
    THUMB_MAX,
    ReportError,
)

_plt, _png_thumb = get_plt, png_thumb  # the names tests and older callers use

__all__ = [
    "CLOSEST_PAIRS", "DIST_SAMPLE", "FD_SAMPLE", "FLAGGED_SHOWN", "GRID_PER_GROUP", "IMAGE_EXT", "JUDGE_PER_GROUP",
    "KNOWN_DECISION_COLUMNS", "MAX_ATTRS_PLOTTED", "MAX_GROUPS_SHOWN", "MEMO_THRESHOLD", "N_BOOT", "NEAR_DUP_COS",
    "PERCEIVED_ORDER", "REF_MAX", "REPORT_FORMAT", "REPORT_VERSION", "SEED", "THUMB_MAX", "Dataset",
    "JudgeResult", "Reference", "ReportError", "ShardFiles", "build_report", "group_key", "iter_records",
    "load_dataset", "load_reference", "publish_report", "read_json", "read_pngs", "report_bytes", "write_report",
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
    """Deterministic, content-independent choice of k samples: lowest sha256(salt|sample_id). The streamed
    choice (:func:`pipelines.report.scan.rank`) picks the same samples without holding the ids."""
    def rank(i: int) -> str:
        return hashlib.sha256(f"{salt}|{sample_ids[i]}".encode()).hexdigest()

    return sorted(sorted(ids, key=rank)[:k], key=lambda i: sample_ids[i])


def _settings() -> dict[str, Any]:
    return {"grid_per_group": GRID_PER_GROUP, "judge_per_group": JUDGE_PER_GROUP,
            "dist_sample": DIST_SAMPLE, "fd_sample": FD_SAMPLE, "reference_max": REF_MAX,
            "memorisation_threshold": MEMO_THRESHOLD, "near_duplicate_cosine": NEAR_DUP_COS,
            "prdc_k": M.PRDC_K, "cmmd_sigma": M.CMMD_SIGMA, "cmmd_scale": M.CMMD_SCALE,
            "bootstrap": {"resamples": N_BOOT, "level": 0.95, "seed": SEED},
            "bounded_samples": {"score_values": SCORE_SAMPLE, "score_values_per_group": GROUP_SCORE_SAMPLE,
                                "embeddings": DIST_SAMPLE, "embeddings_per_group": EMB_PER_GROUP,
                                "flagged_listed": FLAGGED_LISTED, "selection": "lowest sha256 of the sample id"}}


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


def _scan(ds: Dataset, ref: Reference | None, candidates: set[str]) -> SampleScan:
    """Every shard once: records and embeddings into bounded aggregates (and top-1 cosines to the reference)."""
    rem = None
    if ref is not None:
        try:
            rem = M.normalise(ref.emb)
        except M.NonFiniteError:  # the reference section names the rows
            rem = None
    scan = SampleScan(rem, candidates)
    for sh in ds.shards:
        scan.add_shard(ds, sh)
    return scan.finish()


def _images(ds: Dataset, scan: SampleScan, thumb_ids: dict[str, int]) -> tuple[dict[str, str], JudgeResult]:
    """(thumbnails by sample id, the judge's result): one read of each shard holding an image the report
    shows or judges; images are thumbnailed or judged as they are read, so a few are held at a time."""
    plugin, specs, note = judge_setup([p.prompt for p in scan.judge])
    judging = plugin is not None and any(specs.values())
    judged_in = {}
    for i, p in enumerate(scan.judge if judging else []):
        judged_in.setdefault(p.shard, {})[p.sample_id] = i
    thumbs: dict[str, str] = {}
    verdicts: dict[int, dict[str, str]] = {}
    for sh in ds.shards:
        shown = {s for s, no in thumb_ids.items() if no == sh.no}
        judged = judged_in.get(sh.no, {})
        if not shown and not judged:
            continue
        for sid, png in read_pngs(ds.store, sh, shown | set(judged)).items():
            if sid in shown:
                thumbs[sid] = png_thumb(png)
            if sid in judged:
                verdicts[judged[sid]] = judge_image(plugin, png)
    return {s: thumbs[s] for s in sorted(thumbs)}, judge_result(plugin, note, specs, verdicts)


def build_report(store: Store, reference: str | None = None, *, index: dict[str, Any] | None = None,
                 reference_options: dict[str, Any] | None = None,
                 strict_reference: bool = False) -> tuple[dict[str, Any], str]:
    """(report.json content, HTML) for the dataset at ``store``. ``index``: the index about to be written
    (publish calls this before ``index.json`` exists); otherwise ``index.json`` is read. An unreadable
    ``reference`` is an error with ``strict_reference``, else the reference section says why it is empty."""
    ds = load_dataset(store, index)
    prompt_groups = ds.prompt_groups
    if prompt_groups is None and ds.decision_keys:
        prompt_groups = published_prompt_groups(ds)
    dec = read_decisions(ds, prompt_groups)
    tim = read_timings(ds)
    # reference before the scan: every sample's top-1 cosine to it is taken as the shards stream by
    ref, ref_error = _load_reference(ds, reference, reference_options, strict_reference)
    scan = _scan(ds, ref, set(dec.show_candidates()) if dec is not None else set())
    planned = dec.planned if dec is not None else Counter()
    groups = sorted(set(scan.kept) | set(planned))

    try:
        ref_json, ref_extra = reference_section(ds, ref, ref_error, dec, scan)
    except M.NonFiniteError as e:  # NaN/inf embeddings: the section names the samples instead of numbers
        bad = {k: v for k, v in scan.nonfinite().items() if k == "image_emb"} | (
            {"reference": [ref.ids[i] for i in M.nonfinite_rows(ref.emb)]}
            if ref is not None and M.nonfinite_rows(ref.emb) else {})
        ref_json, ref_extra = {"available": False, "note": "Reference metrics " + metrics_error(e, bad),
                               "non_finite_samples": bad}, {}
    safety_json, flagged_ids = safety_section(ds, dec, scan)

    # the images the report shows or judges, read in one pass over the shards that hold them
    grid = {g: scan.grid.get(g, []) for g in groups}
    shown_groups = groups[:MAX_GROUPS_SHOWN]
    thumb_ids = {sid: shard for sid, _, _, shard in ref_extra.get("pairs", [])}
    thumb_ids |= {sid: scan.found[sid] for sid in flagged_ids}
    thumb_ids |= {p.sample_id: p.shard for g in shown_groups for p in grid[g]}
    thumbs, jr = _images(ds, scan, thumb_ids)
    try:
        zs = zero_shot(ds, scan, sorted(jr.verdicts), jr.plugin) if jr.available else ({}, "")
    except M.NonFiniteError as e:
        zs = ({}, "CLIP zero-shot labels " + metrics_error(e, {k: v for k, v in scan.nonfinite().items()
                                                               if k == "image_emb"}))

    perceived, source = perceived_section(groups, scan, ds, dec, jr)
    plt = get_plt()
    summary = summary_section(ds, dec, tim, scan)
    try:
        alignment = alignment_section(groups, scan, jr, zs)
    except M.NonFiniteError as e:  # the judge-vs-CLIPScore numbers need finite scores: name the samples
        bad = {k: v for k, v in scan.nonfinite().items() if k == "clip_score"}
        alignment = alignment_section(groups, scan, JudgeResult(False), ({}, ""))
        alignment["judge"] |= {"note": "judge agreement and CLIPScore AUC " + metrics_error(e, bad),
                               "non_finite_samples": bad}
    diversity = diversity_section(ds, groups, scan, dec)
    curation = curation_section(ds)
    finding_qc = qc_section(ds, dec)
    quota = quota_section(ds)

    group_rows = [{
        "group": g, "attributes": scan.group_attrs.get(g, {}), "planned": planned.get(g) if dec is not None else None,
        "kept": scan.kept.get(g, 0), "clipscore": alignment["clipscore"]["per_group"][g],
        "vendi": (diversity["vendi"].get("per_group") or {}).get(g),
        "judge_all_correct": (alignment["judge"].get("per_group_all_specified_correct") or {}).get(g),
        "grid": [p.sample_id for p in grid[g]],
        "perceived": perceived.get(g),
    } for g in groups]
    report = _clean({
        "format": REPORT_FORMAT, "version": REPORT_VERSION, "settings": _settings(), "summary": summary,
        "groups": {"count": len(groups), "perceived_source": source, "rows": group_rows},
        "alignment": alignment, "diversity": diversity, "reference": ref_json, "safety": safety_json,
        "curation": curation, "finding_qc": finding_qc, "quota": quota,
    })

    # ---- HTML
    plots = section_plots(plt, scan, dec, shown_groups, summary, alignment, diversity, ref_extra)
    safety_figs = safety_plots(plt, dec, safety_json)
    group_plots = {row["group"]: _group_attr_plot(plt, row["perceived"])
                   for row in report["groups"]["rows"][:MAX_GROUPS_SHOWN] if row.get("perceived")}
    cur_plots = curation_plots(plt, curation)

    pairs_view = []
    if ref is not None and ref_extra.get("pairs"):
        ref_png = ref.pngs([p[1] for p in ref_extra["pairs"]])
        for sid, ri, cos, _ in ref_extra["pairs"]:
            pairs_view.append({"sample_id": sid, "reference_id": ref.ids[ri], "cosine": cos,
                               "gen": thumbs.get(sid), "ref": png_thumb(ref_png[ri]) if ri in ref_png else None})
    flagged_view = [{"sample_id": sid, "img": thumbs.get(sid)} for sid in flagged_ids]
    grids = {g: [{"sample_id": p.sample_id, "clip": p.clip, "prompt": p.prompt, "img": thumbs.get(p.sample_id)}
                 for p in grid[g]] for g in shown_groups}
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
