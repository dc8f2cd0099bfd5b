"""The audit report's alignment section: does each image show what its prompt asks for?

CLIPScore from the records (checked against the published embeddings), and, where the prompts are in a judge
plug-in's caption language (the toy world registers one), the plug-in's non-learned judge on a deterministic
subset (at most ``JUDGE_PER_GROUP`` per group) plus CLIP zero-shot labels from those samples' stored embeddings,
each compared with the prompt and with each other.
A missing plug-in or unreachable CLIP weights only empty the subsection that needs them, with a note saying why."""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.report import metrics as M
from pipelines.report.data import Dataset
from pipelines.report.reference import clip_embedder
from pipelines.report.scan import SampleScan
from pipelines.report.settings import N_BOOT, SEED
from pipelines.report.stream import ScoreStats


@dataclass
class JudgeResult:
    available: bool
    note: str = ""
    verdicts: dict[int, dict[str, str]] = field(default_factory=dict)  # sample index -> judged attributes
    specs: dict[int, dict[str, str]] = field(default_factory=dict)  # sample index -> attributes the prompt asks
    plugin: Any = None  # the judge plug-in that produced the verdicts


def judge_plugin() -> tuple[Any, str]:
    """The first judge plug-in installed (entry point group ``synthgen.judges``, by name), or a note why none.

    Plug-ins keep the core free of any world's vocabulary: the toy world registers one in pyproject.toml."""
    from importlib.metadata import entry_points

    notes = []
    for ep in sorted(entry_points(group="synthgen.judges"), key=lambda e: e.name):
        try:
            return ep.load(), ""
        except Exception as e:  # noqa: BLE001 - a broken plug-in only removes this subsection
            notes.append(f"judge plug-in '{ep.name}' not importable ({type(e).__name__}: {e})")
    return None, "; ".join(notes) or "no judge plug-in installed (entry point group synthgen.judges)"


NOT_APPLICABLE = "no prompt is in the judge plug-in's caption language, so its judge does not apply"


def judge_setup(prompts: list[str]) -> tuple[Any, dict[int, dict[str, str]], str]:
    """(plug-in or None, what each prompt asks by index, why there is no plug-in): before any image is read,
    so images are fetched for judging only when some prompt is in the plug-in's caption language."""
    plugin, note = judge_plugin()
    if plugin is None:
        return None, {}, note
    return plugin, {i: plugin.parse_caption(p) for i, p in enumerate(prompts)}, ""


def judge_image(plugin: Any, png: bytes) -> dict[str, str]:
    """The plug-in's verdict on one encoded image."""
    from PIL import Image

    return plugin.judge(Image.open(io.BytesIO(png)))


def judge_result(plugin: Any, note: str, specs: dict[int, dict[str, str]],
                 verdicts: dict[int, dict[str, str]]) -> JudgeResult:
    """The judge's result over the samples it saw (a sample whose image could not be read is left out)."""
    if plugin is None:
        return JudgeResult(False, note)
    specs = {i: specs[i] for i in sorted(verdicts)}
    if not any(specs.values()):
        return JudgeResult(False, NOT_APPLICABLE)
    return JudgeResult(True, "", dict(sorted(verdicts.items())), specs, plugin)


def zero_shot(ds: Dataset, scan: SampleScan, rows: list[int], plugin: Any) -> tuple[dict[str, dict[int, str]], str]:
    """CLIP zero-shot colour/shape labels of the given judge samples (indices into ``scan.judge``) from their
    stored image embeddings, with the judge plug-in's class prompts encoded by the dataset's own CLIP."""
    if not scan.has_img_emb:
        return {}, "no embeddings published"
    try:
        embedder = clip_embedder((ds.provenance.get("job_spec") or {}).get("clip"))
    except Exception as e:  # noqa: BLE001 - weights not reachable from here: the section says so
        return {}, f"the dataset's CLIP could not be loaded here ({type(e).__name__}: {e})"
    emb = M.normalise(np.stack([scan.judge[r].img_emb for r in rows]) if rows else np.zeros((0, scan.dim or 0)))
    out: dict[str, dict[int, str]] = {}
    for attr, prompts in plugin.zero_shot_vocab().items():
        labels = list(prompts)
        cls = M.normalise(np.stack([embedder.text_embeddings(prompts[c]).mean(0) for c in labels]))
        if cls.shape[1] != emb.shape[1]:
            return {}, (f"the CLIP named in provenance embeds text in {cls.shape[1]} dimensions, the published image "
                        f"embeddings have {emb.shape[1]}")
        pred = (emb @ cls.T).argmax(1)
        out[attr] = {r: labels[p] for r, p in zip(rows, pred)}
    return out, ""


def _rate(values: list[bool], seed: int = SEED) -> dict[str, Any]:
    if not values:
        return {"n": 0, "rate": None, "lo": None, "hi": None}
    lo, hi = M.bootstrap_ci(np.asarray(values, np.float64), n_boot=N_BOOT, seed=seed)
    return {"n": len(values), "rate": float(np.mean(values)), "lo": lo, "hi": hi}


def alignment_section(groups: list[str], scan: SampleScan, jr: JudgeResult,
                      zs: tuple[dict[str, dict[int, str]], str]) -> dict[str, Any]:
    empty = ScoreStats(0)
    out: dict[str, Any] = {
        "clipscore": {"formula": "100 * max(cos(image_emb, text_emb), 0)", "scale": "0..100",
                      "overall": scan.clip.summary(seed=SEED),
                      "per_group": {g: scan.clip_by_group.get(g, empty).summary(seed=SEED) for g in groups}},
    }
    if scan.has_txt_emb:
        out["clipscore"]["max_abs_diff_records_vs_embeddings"] = float("nan") if scan.clip_diff is None \
            else scan.clip_diff
    judge: dict[str, Any] = {"available": jr.available, "note": jr.note}
    if jr.available:
        judge |= _judge_agreement([p.group for p in scan.judge], [p.clip for p in scan.judge], groups, jr)
        judge["clip_zero_shot"] = _zero_shot_agreement(jr, zs)
    out["judge"] = judge
    return out


def _judge_agreement(sample_groups: list[str], clip: list[float], groups: list[str],
                     jr: JudgeResult) -> dict[str, Any]:
    """How often the judge sees what the prompt asks, per attribute and group; and whether CLIPScore knows."""
    agreement = jr.plugin.agreement
    per_attr: dict[str, list[bool]] = defaultdict(list)
    per_group_all: dict[str, list[bool]] = defaultdict(list)
    all_ok, with_spec = [], []
    unknown = 0
    for i, verdict in jr.verdicts.items():
        spec = jr.specs.get(i) or {}
        if verdict.get("domain") == "unknown":
            unknown += 1
        if not spec:
            continue
        agree = agreement(spec, verdict)
        for k, v in agree.items():
            per_attr[k].append(bool(v))
        ok = all(agree.values()) if agree else False
        all_ok.append(ok)
        with_spec.append(i)
        per_group_all[sample_groups[i]].append(ok)
    out: dict[str, Any] = {
        "judged": len(jr.verdicts), "unparsed_images": unknown,
        "unparsed_rate": unknown / max(len(jr.verdicts), 1),
        "prompt_agreement": {k: _rate(v) for k, v in sorted(per_attr.items())},
        "all_specified_correct": _rate(all_ok),
        "per_group_all_specified_correct": {g: _rate(per_group_all[g]) for g in groups if g in per_group_all},
    }
    pos = [clip[i] for i, ok in zip(with_spec, all_ok) if ok]
    neg = [clip[i] for i, ok in zip(with_spec, all_ok) if not ok]
    out["clipscore_vs_judge"] = {
        "auc": M.auc(pos, neg), "n_correct": len(pos), "n_incorrect": len(neg),
        "mean_clipscore_correct": float(np.mean(pos)) if pos else None,
        "mean_clipscore_incorrect": float(np.mean(neg)) if neg else None,
        "meaning": "P(CLIPScore of a judge-correct sample > that of a judge-incorrect one); 0.5 = CLIPScore "
                   "carries no information about what the judge sees",
    }
    return out


def _zero_shot_agreement(jr: JudgeResult, zs: tuple[dict[str, dict[int, str]], str]) -> dict[str, Any]:
    """CLIP zero-shot labels vs the judge (single-object images it could read) and vs the prompt."""
    zsl, zs_note = zs
    zero: dict[str, Any] = {"available": bool(zsl), "note": zs_note}
    for attr, labels in sorted(zsl.items()):
        pairs_j = [(labels[i], jr.verdicts[i].get(attr)) for i in labels
                   if jr.verdicts.get(i, {}).get("count") == "1" and jr.verdicts[i].get(attr) not in
                   (None, "unknown")]
        pairs_p = [(labels[i], jr.specs[i][attr]) for i in labels if attr in (jr.specs.get(i) or {})]
        pairs_jp = [(jr.verdicts[i].get(attr, "unknown"), jr.specs[i][attr]) for i in labels
                    if attr in (jr.specs.get(i) or {})]
        zero[attr] = {
            "clip_vs_judge": _rate([a == b for a, b in pairs_j]) | {
                "kappa": M.cohen_kappa([a for a, _ in pairs_j], [b for _, b in pairs_j])},
            "clip_vs_prompt": _rate([a == b for a, b in pairs_p]),
            "judge_vs_prompt": _rate([a == b for a, b in pairs_jp]),
        }
    return zero
