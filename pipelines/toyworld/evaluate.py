"""Measure the shipped toy models against the issue's quality bars and write REPORT.md.

`python -m pipelines.toyworld.evaluate` loads every model through the same calls the pipeline
uses, judges held-out generations with the non-learned judge, and writes `REPORT.md`,
`report_metrics.json` and image grids next to this file. Nothing in the report is typed in by
hand: every figure comes from this run.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipelines.toyworld.clip_eval import image_features, zero_shot
from pipelines.toyworld.data import EvalPrompt, audit_prompts, eval_prompts
from pipelines.toyworld.judge import agreement, judge
from pipelines.toyworld.models import (
    DIFFUSION_DEFAULTS,
    DIFFUSION_DIR,
    GAN_DIR,
    load_clip,
    load_diffusion,
)
from pipelines.toyworld.world import COLOURS, PLANTED_SKEW, SHAPES, Attributes, ShapeSpec, render

HERE = Path(__file__).parent
STEPS = int(DIFFUSION_DEFAULTS["num_inference_steps"])
GUIDANCE = float(DIFFUSION_DEFAULTS["guidance_scale"])
SIZE, BATCH = int(DIFFUSION_DEFAULTS["height"]), 8
EVAL_DIVERSITY_SEED = 10_700_000
# The quality bars of issue 11 (held-out prompts, judged by the non-learned judge).
BARS = {("shapes", "colour"): 0.95, ("shapes", "shape"): 0.85, ("shapes", "position"): 0.95,
        ("shapes", "count"): 0.95, ("phantom", "nodule"): 0.95, ("phantom", "nodule_side"): 0.9}
PAIR_BAR = 0.75  # shape agreement of every held-out (shape, colour) pair
DUPLICATE_DISTANCE = 4  # pHash Hamming distance the demo's dedup calls "the same picture"
DIVERSITY_PROMPTS = [f"a {c} {s}" for s in SHAPES for c in ("red", "green", "blue", "yellow")]
DIVERSITY_SEEDS = 16


def diffusion_generate(pipe: Any, prompts: list[EvalPrompt], steps: int = STEPS,
                       guidance: float = GUIDANCE, batch: int = BATCH) -> np.ndarray:
    """uint8 images for prompts, called exactly as the pipeline backend calls diffusers."""
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i: i + batch]
        result = pipe(prompt=[p.prompt for p in chunk], negative_prompt=None,
                      num_inference_steps=steps, guidance_scale=guidance, height=SIZE, width=SIZE,
                      generator=[torch.Generator().manual_seed(p.seed) for p in chunk],
                      output_type="np")
        out.append(np.clip(np.rint(result.images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def agreement_rates(prompts: list[EvalPrompt], verdicts: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """Per group and attribute, the share of samples whose judged attribute matches the prompt."""
    hits: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for p, v in zip(prompts, verdicts):
        for key, ok in agreement(p.spec, v).items():
            hits[p.group][key] += ok
            counts[p.group][key] += 1
    return {g: {k: hits[g][k] / counts[g][k] for k in counts[g]} for g in counts}


def shape_by_colour(prompts: list[EvalPrompt], verdicts: list[dict[str, str]]
                    ) -> dict[str, dict[str, float]]:
    """Shape agreement per held-out (shape, colour) pair: shows whether the planted colour prior
    leaks into shape (the planted colour pulling any shape towards the skewed one)."""
    hits: dict[str, list[bool]] = collections.defaultdict(list)
    for p, v in zip(prompts, verdicts):
        if p.group == "shapes" and p.spec.get("colour") and p.spec.get("shape"):
            hits[f"{p.spec['shape']} / {p.spec['colour']}"].append(v.get("shape") == p.spec["shape"])
    order = {f"{s} / {c}": (i, j) for i, s in enumerate(SHAPES) for j, c in enumerate(COLOURS)}
    return {k: {"rate": float(np.mean(hits[k])), "n": len(hits[k])}
            for k in sorted(hits, key=order.__getitem__)}


def duplicate_rate(groups: list[np.ndarray], distance: int = DUPLICATE_DISTANCE) -> float:
    """Share of samples within `distance` pHash bits of an earlier sample of the same group: what
    perceptual dedup (keep the first) would drop if every group were one prompt's samples."""
    import imagehash
    from PIL import Image

    dropped = total = 0
    for images in groups:
        kept: list[Any] = []
        for im in images:
            h = imagehash.phash(Image.fromarray(np.ascontiguousarray(im)))
            if any(h - k <= distance for k in kept):
                dropped += 1
            else:
                kept.append(h)
            total += 1
    return dropped / total


def seed_diversity(pipe: Any) -> dict[str, Any]:
    """Perceptual-duplicate rate among the samples of one prompt (the demo's style of prompt:
    colour and shape given, position, size and background left to the seed), next to the same
    rate for the world's own images of those attributes (the diversity the prompt allows)."""
    prompts = [EvalPrompt(text, {}, "diversity", EVAL_DIVERSITY_SEED + 100 * i + k)
               for i, text in enumerate(DIVERSITY_PROMPTS) for k in range(DIVERSITY_SEEDS)]
    images = diffusion_generate(pipe, prompts)
    model = [images[i: i + DIVERSITY_SEEDS] for i in range(0, len(images), DIVERSITY_SEEDS)]
    rng = np.random.default_rng(4)
    world = []
    for text in DIVERSITY_PROMPTS:
        _, colour, shape = text.split()
        attrs = [Attributes("shapes", (ShapeSpec(shape, colour, str(rng.choice(["small", "large"])),
                                                 str(rng.choice(["left", "right", "top", "bottom",
                                                                 "centre"]))),),
                            str(rng.choice(["white", "gray", "black"])))
                 for _ in range(DIVERSITY_SEEDS)]
        world.append(np.stack([render(a, EVAL_DIVERSITY_SEED + j) for j, a in enumerate(attrs)]))
    return {"prompts": len(DIVERSITY_PROMPTS), "seeds_per_prompt": DIVERSITY_SEEDS,
            "max_distance": DUPLICATE_DISTANCE, "duplicate_rate": duplicate_rate(model),
            "world_duplicate_rate": duplicate_rate(world)}


def planted_skew(directory: Path = DIFFUSION_DIR) -> dict[str, Any]:
    """The planted prior the shipped diffusion model was trained with (its training metrics)."""
    path = directory / "training_metrics.json"
    if path.exists():
        skew = json.loads(path.read_text()).get("planted_skew")
        if skew:
            return skew
    return dict(PLANTED_SKEW)  # weights trained before the diffusion had its own prior


def distribution(prompts: list[EvalPrompt], verdicts: list[dict[str, str]], attribute: str,
                 group: str) -> dict[str, float]:
    """Judged distribution of an attribute the prompts of `group` left unspecified."""
    values = [v.get(attribute, "unknown") for p, v in zip(prompts, verdicts) if p.group == group]
    return {k: c / len(values) for k, c in collections.Counter(values).most_common()}


def grid(images: np.ndarray, labels: list[str], path: Path, cols: int = 4, scale: int = 4) -> None:
    """Image grid with each prompt written beside its output (for eyeballing)."""
    side = images.shape[1] * scale
    cell_w = side + 260
    rows = (len(images) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * cell_w, rows * (side + 8)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (img, text) in enumerate(zip(images, labels)):
        x, y = (i % cols) * cell_w, (i // cols) * (side + 8)
        canvas.paste(Image.fromarray(img).resize((side, side), Image.NEAREST), (x, y))
        words, lines = text.split(), [""]
        for w in words:
            lines[-1:] = [lines[-1], w] if len(lines[-1]) + len(w) > 38 else [f"{lines[-1]} {w}".strip()]
        draw.multiline_text((x + side + 4, y + 2), "\n".join(lines), fill="black")
    canvas.save(path)


def grid_selection(prompts: list[EvalPrompt], per_group: int = 4) -> list[int]:
    """A few evenly spaced samples of every prompt group, for the report grid."""
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, p in enumerate(prompts):
        groups[p.group].append(i)
    out = []
    for group, idx in groups.items():
        k = 3 * per_group if group in ("shapes", "phantom") else per_group
        out += [idx[j] for j in np.linspace(0, len(idx) - 1, min(k, len(idx))).astype(int)]
    return out


def generation_speed(pipe: Any, prompts: list[EvalPrompt], repeats: int = 3) -> float:
    """Milliseconds per image at batch 8 with the recommended settings (median of runs)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        diffusion_generate(pipe, prompts[:BATCH])
        times.append((time.perf_counter() - start) / BATCH * 1000)
    return float(np.median(times))


def evaluate_diffusion(directory: Path = DIFFUSION_DIR
                       ) -> tuple[dict[str, Any], np.ndarray, list[EvalPrompt]]:
    """Quality bars, audit distributions, seed diversity and speed of the diffusion model."""
    pipe = load_diffusion(directory)
    prompts = eval_prompts()
    audits = audit_prompts()
    images = diffusion_generate(pipe, prompts + audits)
    verdicts = [judge(im) for im in images]
    main_v, audit_v = verdicts[: len(prompts)], verdicts[len(prompts):]
    rates = agreement_rates(prompts, main_v)
    audit = {g: distribution(audits, audit_v, "colour", g) for g in
             sorted({p.group for p in audits if p.group.startswith("colour|")})}
    audit["nodule_side"] = distribution(audits, audit_v, "nodule_side", "nodule_side")
    metrics = {"samples": len(prompts), "audit_samples": len(audits), "steps": STEPS,
               "guidance": GUIDANCE, "size": SIZE, "agreement": rates, "unspecified": audit,
               "shape_by_colour": shape_by_colour(prompts, main_v),
               "seed_diversity": seed_diversity(pipe),
               "planted_skew": planted_skew(directory),
               "ms_per_image_batch8": generation_speed(pipe, prompts),
               "threads": torch.get_num_threads()}
    return metrics, images, prompts + audits


def evaluate_clip(diffusion_images: np.ndarray, diffusion_prompts: list[EvalPrompt]) -> dict[str, Any]:
    """CLIP zero-shot on held-out procedural images, and its agreement with the judge on
    diffusion outputs (single-shape images the judge could parse)."""
    from pipelines.toyworld.train_clip import evaluate as clip_bars

    model, preprocess, tokenizer = load_clip()
    out = clip_bars(model, preprocess, tokenizer)
    keep = [i for i, p in enumerate(diffusion_prompts) if p.spec["domain"] == "shapes"]
    verdicts = [judge(diffusion_images[i]) for i in keep]
    feats = image_features(model, preprocess, diffusion_images[keep])
    for attribute in ("colour", "shape"):
        pred = zero_shot(model, tokenizer, feats, attribute)
        pairs = [(p, v[attribute]) for p, v in zip(pred, verdicts)
                 if v.get(attribute, "unknown") != "unknown"]
        out[f"diffusion_{attribute}_agrees_with_judge"] = float(np.mean([a == b for a, b in pairs]))
        out[f"diffusion_{attribute}_judged_samples"] = len(pairs)
    return out


def evaluate_gan() -> dict[str, Any]:
    from pipelines.toyworld.train_gan import evaluate

    return evaluate(GAN_DIR)


def bar_summary(diffusion: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every bar of the diffusion model with its measured value and whether it is met."""
    out = {}
    for (group, key), bar in BARS.items():
        value = diffusion["agreement"].get(group, {}).get(key)
        if value is not None:
            out[f"{group}/{key}"] = {"value": value, "bar": bar, "met": value >= bar}
    pairs = diffusion.get("shape_by_colour", {})
    if pairs:
        worst = min(pairs, key=lambda k: pairs[k]["rate"])
        out["shapes/shape, worst (shape, colour) pair"] = {
            "value": pairs[worst]["rate"], "bar": PAIR_BAR, "met": pairs[worst]["rate"] >= PAIR_BAR,
            "pair": worst}
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--diffusion", type=Path, default=DIFFUSION_DIR,
                        help="a diffusion pipeline folder to measure (default: the shipped one)")
    parser.add_argument("--diffusion-only", action="store_true",
                        help="measure the diffusion model only and print; write no report")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    diffusion, images, prompts = evaluate_diffusion(args.diffusion)
    diffusion["bars"] = bar_summary(diffusion)
    if args.diffusion_only:
        print(json.dumps(diffusion, indent=2))
        return
    results = {"diffusion": diffusion, "clip": evaluate_clip(images, prompts), "gan": evaluate_gan(),
               "planted_skew": diffusion["planted_skew"]}
    (HERE / "report_metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    pick = grid_selection(prompts)
    grid(images[pick], [prompts[i].prompt for i in pick], HERE / "report_diffusion_grid.png")
    from pipelines.toyworld.report import write_report_md

    write_report_md(results, HERE / "REPORT.md")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
