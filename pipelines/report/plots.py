"""The audit report's figures: matplotlib (Agg) plots and image thumbnails as ``data:`` URIs, so the HTML
is one self-contained file. Every plot skips empty and non-finite inputs (a group whose samples were all
rejected has no scores) and returns None when nothing is left to draw."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

from pipelines.report.decisions import DecisionStats
from pipelines.report.scan import SampleScan
from pipelines.report.settings import MAX_ATTRS_PLOTTED, MEMO_THRESHOLD, THUMB_MAX
from pipelines.report.stream import ScoreStats


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png_thumb(png: bytes) -> str:
    """A data URI of the image, downscaled when larger than THUMB_MAX."""
    from PIL import Image

    im = Image.open(io.BytesIO(png))
    if max(im.size) > THUMB_MAX:
        im = im.convert("RGB")
        im.thumbnail((THUMB_MAX, THUMB_MAX), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        png = buf.getvalue()
    return _data_uri(png)


def _fig_uri(fig: Any, tight: bool = True) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, metadata={"Software": None}, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return _data_uri(buf.getvalue())


def get_plt() -> Any:
    """pyplot on the Agg backend with the report's style (imported late: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.hashsalt": "synthgen"})
    return plt


def fmt(v: Any, digits: int = 3) -> str:
    """A number for the HTML and plot labels ('–' when absent or not finite)."""
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


# ============================================================================ single figures


def bar_h(plt: Any, items: dict[str, float], title: str, xlabel: str, color: str = "#4C72B0",
          base: float = 0.0) -> str | None:
    items = {k: float(v) for k, v in items.items() if v is not None and math.isfinite(float(v))}
    if not items:
        return None
    names = list(items)
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(names) + 0.9))
    vals = [items[n] for n in names]
    ax.barh(range(len(names)), [v - base for v in vals], left=base, color=color)
    top = max(vals + [base + 1e-9])
    for y, v in enumerate(vals):
        ax.text(v + (top - base) * 0.01, y, fmt(float(v)), va="center", fontsize=7)
    ax.set_xlim(base, base + (top - base) * 1.12)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _fig_uri(fig)


def group_attr_plot(plt: Any, p: dict[str, Any]) -> str | None:
    """Per perceived attribute: shares with 95% intervals, one bar per source (before, after, judge), and the
    uniformity test of the curated labels in the title. A source with no sample for an attribute (a group
    curation emptied) draws no bar; with no sample anywhere there is no figure (None)."""
    from matplotlib.container import BarContainer

    def nonempty(d: dict[str, Any]) -> dict[str, Any]:
        return {a: dist for a, dist in d.items() if sum((v or {}).get("count") or 0 for v in dist.values()) > 0}

    series = [(name, nonempty(p[key]), colour) for key, name, colour in
              (("before", "before curation", "#4C72B0"), ("after", "after curation", "#DD8452"),
               ("judge", "judge (published)", "#55A868")) if p.get(key)]
    series = [s for s in series if s[1]]
    attrs = list(dict.fromkeys(a for _, d, _ in series for a in d))
    informative = [a for a in attrs if any(len(d.get(a, {})) > 1 or "unknown" in d.get(a, {}) for _, d, _ in series)]
    # attributes both sources know first, so CLIP's and the judge's views sit side by side
    attrs = sorted(informative or attrs[:1], key=lambda a: -sum(a in d for _, d, _ in series))[:MAX_ATTRS_PLOTTED]
    if not attrs:
        return None
    fig, axes = plt.subplots(1, len(attrs), figsize=(1.9 * len(attrs) + 1.3, 1.9), squeeze=False)
    fig.subplots_adjust(left=0.55 / (1.9 * len(attrs) + 1.3), right=1 - 1.1 / (1.9 * len(attrs) + 1.3), bottom=0.3,
                        top=0.88, wspace=0.35)
    for ax, attr in zip(axes[0], attrs):
        here = [(n, d[attr], c) for n, d, c in series if attr in d]
        cats = sorted({c for _, dist, _ in here for c in dist})
        x = np.arange(len(cats))
        w = 0.8 / len(here)
        for j, (label, dist, color) in enumerate(here):
            sh = np.array([dist.get(c, {}).get("share", 0.0) or 0.0 for c in cats])
            lo = np.array([dist.get(c, {}).get("lo", 0.0) or 0.0 for c in cats])
            hi = np.array([dist.get(c, {}).get("hi", 0.0) or 0.0 for c in cats])
            ax.bar(x + (j - (len(here) - 1) / 2) * w, sh, w, label=label, color=color,
                   yerr=np.vstack([np.clip(sh - lo, 0, None), np.clip(hi - sh, 0, None)]), capsize=2,
                   error_kw={"elinewidth": 0.8})
        ax.set_xticks(x, cats, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(attr + _uniformity_note(p, attr), fontsize=7)
    axes[0][0].set_ylabel("share (95% CI)", fontsize=8)
    handles = {h.get_label(): h for ax in axes[0] for h in ax.containers
               if isinstance(h, BarContainer) and not h.get_label().startswith("_")}
    axes[0][-1].legend(list(handles.values()), list(handles), fontsize=6, frameon=False, loc="upper left",
                       bbox_to_anchor=(1.0, 1.0))
    return _fig_uri(fig, tight=False)


def _uniformity_note(p: dict[str, Any], attr: str) -> str:
    """"\nafter: skewed, p = 0.003" / "\nafter: uniform not rejected, p = 0.41" (the latest curated view)."""
    for key in ("after", "before"):
        u = ((p.get("uniformity") or {}).get(key) or {}).get(attr) or {}
        if u.get("p_value") is not None:
            verdict = "skewed" if u.get("skewed") else "uniform not rejected"
            return f"\n{key}: {verdict}, p = {u['p_value']:.2g}"
    return ""


def clip_box(plt: Any, scan: SampleScan, dec: DecisionStats | None, groups: list[str]) -> str | None:
    """CLIPScore per group: kept samples, and all generated ones (by prompt) when decisions are known (each
    from the group's bounded sample of scores)."""
    if not scan.n:
        return None
    none = ScoreStats(0)
    after = [scan.clip_by_group.get(g, none).values() for g in groups]
    before = None if dec is None else [dec.clip_by_group.get(g, none).values() for g in groups]
    fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(groups) + 1.0))
    pos = np.arange(len(groups))
    import matplotlib

    horiz = {"orientation": "horizontal"} if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10) \
        else {"vert": False}
    if before is not None:
        ax.boxplot([list(b) for b in before], positions=pos - 0.18, widths=0.3, **horiz,
                   patch_artist=True, boxprops={"facecolor": "#4C72B0", "alpha": 0.6}, showfliers=False)
    ax.boxplot([list(a) for a in after], positions=pos + (0.18 if before is not None else 0), widths=0.3,
               **horiz, patch_artist=True, boxprops={"facecolor": "#DD8452", "alpha": 0.8}, showfliers=False)
    ax.set_yticks(pos, groups, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("CLIPScore = 100·max(cos, 0)")
    ax.set_title("CLIPScore per group" + (" (blue: all generated, orange: kept)" if before is not None else " (kept)"))
    return _fig_uri(fig)


def hist(plt: Any, series: list[tuple[Any, ...]], title: str, xlabel: str, vline: float | None = None) -> str | None:
    """Density histograms of (name, values, colour[, n]) series; ``n``: the finite values the series has in
    all when ``values`` is a sample of them (the legend says so)."""
    rows = []
    for name, v, color, *total in series:
        v = np.asarray(v, np.float64)
        v = v[np.isfinite(v)]
        n = total[0] if total and total[0] is not None else len(v)
        rows.append((f"{name} (n={n})" if n == len(v) else f"{name} (n={n}; density from a sample of {len(v)})",
                     v, color))
    rows = [x for x in rows if len(x[1])]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    lo = min(float(v.min()) for _, v, _ in rows)
    hi = max(float(v.max()) for _, v, _ in rows)
    if vline is not None:
        lo, hi = min(lo, vline), max(hi, vline)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 41)
    for label, v, color in rows:
        ax.hist(v, bins=bins, alpha=0.6, label=label, color=color, density=True)
    if vline is not None:
        ax.axvline(vline, color="#C44E52", ls="--", lw=1.2, label=f"threshold {vline:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=7, frameon=False)
    return _fig_uri(fig)


def rates_plot(plt: Any, rates: dict[str, dict[str, Any]], title: str) -> str | None:
    items = [(k, v) for k, v in rates.items() if v.get("rate") is not None]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(items) + 1.0))
    r = np.array([v["rate"] for _, v in items])
    lo = np.array([v["lo"] for _, v in items])
    hi = np.array([v["hi"] for _, v in items])
    ax.barh(range(len(items)), r, xerr=np.vstack([r - lo, hi - r]), color="#55A868", capsize=2)
    for y, v in enumerate(r):
        ax.text(min(v, 0.86) + 0.02, y, f"{100 * v:.0f}%", va="center", fontsize=7)
    ax.set_yticks(range(len(items)), [f"{k} (n={v['n']})" for k, v in items], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("agreement rate (95% bootstrap CI)")
    ax.set_title(title)
    return _fig_uri(fig)


def curation_plot(plt: Any, title: str, series: list[tuple[str, dict[str, float]]]) -> str | None:
    """Grouped bars: the share of each value in each series (e.g. before/after, or after each stage)."""
    cats = sorted({c for _, d in series for c in d})[:20]
    if not cats or not series:
        return None
    fig, ax = plt.subplots(figsize=(max(3.4, 0.5 * len(cats) * max(len(series), 2) / 2 + 1.8), 2.4))
    x = np.arange(len(cats))
    w = 0.8 / len(series)
    colours = plt.get_cmap("tab10").colors
    for j, (name, d) in enumerate(series):
        ax.bar(x + (j - (len(series) - 1) / 2) * w, [d.get(c, 0.0) for c in cats], w, label=name,
               color=colours[j % len(colours)])
    ax.set_xticks(x, cats, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _fig_uri(fig)


# ============================================================================ the report's figure sets


def section_plots(plt: Any, scan: SampleScan, dec: DecisionStats | None, shown_groups: list[str],
                  summary: dict[str, Any], alignment: dict[str, Any], diversity: dict[str, Any],
                  ref_extra: dict[str, Any]) -> dict[str, str | None]:
    """The figures of the summary, alignment, diversity and reference sections, by template name."""
    plots: dict[str, Any] = {}
    plots["stages"] = bar_h(plt, {k: v for k, v in summary["stage_seconds"].items()}, "Time per stage", "seconds")
    plots["rejections"] = bar_h(plt, summary["rejections"], "Rejections by reason", "samples", "#C44E52")
    plots["clip_groups"] = clip_box(plt, scan, dec, shown_groups)
    plots["clip_hist"] = hist(plt, [("kept", scan.clip.values(), "#DD8452", scan.clip.n)] + (
        [("all generated", dec.clip.values(), "#4C72B0", dec.clip.n)] if dec else []),
        "CLIPScore distribution", "CLIPScore = 100·max(cos(image, text), 0)")
    j = alignment["judge"]
    plots["judge_rates"] = rates_plot(plt, j.get("prompt_agreement") or {},
                                      "Judge agrees with the prompt, per attribute") if j["available"] else None
    zero_rates = {}
    for attr, v in (j.get("clip_zero_shot") or {}).items():
        if isinstance(v, dict) and "clip_vs_judge" in v:
            zero_rates |= {f"{attr}: CLIP vs judge": v["clip_vs_judge"], f"{attr}: CLIP vs prompt": v["clip_vs_prompt"],
                           f"{attr}: judge vs prompt": v["judge_vs_prompt"]}
    plots["zero_shot"] = rates_plot(plt, zero_rates, "CLIP zero-shot labels vs the judge and the prompt")
    vg = diversity["vendi"].get("per_group") or {}
    plots["vendi"] = bar_h(plt, {g: vg[g]["score"] for g in shown_groups if g in vg and vg[g]["score"] is not None},
                           "Vendi score per group (1 = no diversity)", "Vendi score", "#8172B3", base=1.0)
    if "top1" in ref_extra:
        top, n = ref_extra["top1"]
        plots["memorisation"] = hist(plt, [("generated → reference", top, "#DD8452", n),
                                           ("reference → reference (baseline)", ref_extra["baseline"], "#4C72B0")],
                                     "Top-1 cosine similarity to the reference set", "cosine", MEMO_THRESHOLD)
    for k, (v, n) in (ref_extra.get("curation_sims") or {}).items():
        plots[f"curation_ref::{k}"] = hist(plt, [(k, v, "#DD8452", n)], f"{k} (from decisions.parquet)", "similarity",
                                           MEMO_THRESHOLD)
    return plots


def safety_plots(plt: Any, dec: DecisionStats | None, safety: dict[str, Any]) -> list[str]:
    """Score histograms of (at most 8) safety columns, each with its threshold when curation names one."""
    out = []
    if dec is not None:
        for k in list(safety.get("scores") or {})[:8]:
            out.append(hist(plt, [(k, dec.scores[k].values(), "#C44E52", dec.scores[k].n)],
                            k, "score", (safety.get("thresholds") or {}).get(k)))
    return [p for p in out if p]


def curation_plots(plt: Any, curation: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(filter, attribute, figure): survivors' shares after each stage, else before/after per filter."""
    out = []
    filters = curation.get("filters") or []
    if "stages" in curation and filters:  # one figure per attribute: survivors' shares after each stage
        for attr in list(filters[0]["attributes"])[:6]:
            series = [(filters[0]["before_stage"], {v: x["before"] for v, x in filters[0]["attributes"][attr].items()})]
            series += [(f["filter"], {v: x["after"] for v, x in f["attributes"].get(attr, {}).items()})
                       for f in filters]
            out.append(("stages", attr, curation_plot(plt, attr, series)))
    else:
        for entry in filters[:12]:
            for attr, vals in list(entry["attributes"].items())[:4]:
                series = [("before", {v: x["before"] for v, x in vals.items()}),
                          ("after", {v: x["after"] for v, x in vals.items()})]
                out.append((entry["filter"], attr, curation_plot(plt, f"{entry['filter']}: {attr}", series)))
    return out
