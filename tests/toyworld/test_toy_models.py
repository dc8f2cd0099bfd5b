"""Each shipped toy model loads through the real loaders, offline, and still does its job.

Loading and prompt-following checks are low bars far above chance, so a broken or swapped weight
file fails quickly; the diffusion's quality bars sit a little under REPORT.md's measured figures,
so a worse model fails too.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.toyworld.data import heldout_images
from pipelines.toyworld.judge import agreement, judge
from pipelines.toyworld.models import (
    ASSETS,
    CLIP_CONFIG,
    CLIP_NAME,
    CLIP_TOKENIZER,
    CLIP_WEIGHTS,
    DIFFUSION_DEFAULTS,
    DIFFUSION_DIR,
    GAN_DIR,
)

os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def clip():
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    open_clip.add_model_config(str(CLIP_CONFIG))
    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_NAME, pretrained=str(CLIP_WEIGHTS))
    context = json.loads(CLIP_CONFIG.read_text())["text_cfg"]["context_length"]
    return model.eval(), preprocess, HFTokenizer(str(CLIP_TOKENIZER), context_length=context)


def test_clip_zero_shot_beats_a_low_bar(clip) -> None:
    from pipelines.toyworld.clip_eval import image_features, zero_shot

    model, preprocess, tokenizer = clip
    images, attrs = heldout_images(90, seed=11)
    feats = image_features(model, preprocess, images)
    for attribute, bar in (("colour", 0.8), ("shape", 0.55)):
        pred = zero_shot(model, tokenizer, feats, attribute)
        acc = np.mean([p == a.flat()[attribute] for p, a in zip(pred, attrs)])
        assert acc >= bar, (attribute, acc)


def test_clip_preprocess_takes_pil_at_generation_sizes(clip) -> None:
    model, preprocess, tokenizer = clip
    for side in (32, 64):
        x = preprocess(Image.new("RGB", (side, side), "white"))[None]
        assert model.encode_image(x).shape == (1, model.text_projection.shape[1])
    ids = tokenizer(["a red circle on the left", "a photo of a nurse"])
    assert ids.shape == (2, json.loads(CLIP_CONFIG.read_text())["text_cfg"]["context_length"])


def test_clip_and_diffusion_share_the_tokenizer(clip) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(DIFFUSION_DIR / "tokenizer"))
    text = "a small red circle, left side, on a white background"
    ids = tok(text, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    assert torch.equal(ids, clip[2]([text]))


@pytest.fixture(scope="module")
def diffusion():
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(DIFFUSION_DIR), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffuse(pipe, prompts: list[str], seeds: list[int]) -> np.ndarray:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(prompt=prompts, negative_prompt=None, generator=generators, output_type="np",
               **DIFFUSION_DEFAULTS)
    return np.clip(np.rint(out.images * 255), 0, 255).astype(np.uint8)


def test_diffusion_text_encoder_is_the_toy_clip_text_tower(clip, diffusion) -> None:
    """As Stable Diffusion keeps CLIP's text encoder: the diffusion model's CLIPTextModel is the toy
    CLIP's text tower, converted weight for weight and left frozen in training (its per-token
    outputs are open_clip's own `ln_final` tokens)."""
    model, _, tokenizer = clip
    ids = tokenizer(["a red square on the left", "chest x-ray with a small nodule in the left lung", ""])
    with torch.no_grad():
        x = model.token_embedding(ids) + model.positional_embedding
        want = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        got = diffusion.text_encoder(ids)[0]
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_diffusion_is_a_stock_pipeline(diffusion) -> None:
    assert type(diffusion).__name__ == "StableDiffusionPipeline"
    assert diffusion.safety_checker is None and diffusion.feature_extractor is None


def test_diffusion_follows_prompts(diffusion) -> None:
    from pipelines.toyworld.captions import parse_caption

    prompts = ["a red circle on the left", "a blue square at the top on a white background",
               "a green triangle in the centre", "a yellow square on the right",
               "a purple circle at the bottom", "an orange triangle on the left",
               "normal chest radiograph", "chest x-ray with a large nodule in the right lung"]
    images = _diffuse(diffusion, prompts, list(range(8)))
    checks = [agreement(parse_caption(p), judge(im)) for p, im in zip(prompts, images)]
    rate = {k: np.mean([c[k] for c in checks if k in c]) for k in ("domain", "colour", "position")}
    assert rate["domain"] >= 0.75 and rate["colour"] >= 0.5 and rate["position"] >= 0.5, checks


# Bars a little under the figures REPORT.md measured on the full held-out set (a subset of it is
# judged here, so the bars leave room for sampling noise, not for a worse model). They are the
# committed v3.1 weights' figures: colour 99.0%, shape 99.25% (every held-out shape/colour pair
# >= 91%), position, count, nodule and side 100%; on this subset colour 98%, shape 99%.
DIFFUSION_BARS = {("shapes", "colour"): 0.97, ("shapes", "shape"): 0.95, ("shapes", "position"): 0.97,
                  ("shapes", "count"): 0.97, ("phantom", "nodule"): 0.95,
                  ("phantom", "nodule_side"): 0.95}
MAX_SEED_DUPLICATES = 0.1  # measured: 7.3% (REPORT.md, 16 seeds of 12 prompts; the world's own: 2.1%)


def test_diffusion_meets_its_bars_on_held_out_prompts(diffusion) -> None:
    from pipelines.toyworld.data import eval_prompts
    from pipelines.toyworld.evaluate import agreement_rates, diffusion_generate

    prompts = eval_prompts()
    subset = [p for p in prompts if p.group == "shapes"][::4] + [p for p in prompts
                                                               if p.group == "phantom"][::3]
    rates = agreement_rates(subset, [judge(im) for im in diffusion_generate(diffusion, subset)])
    low = {k: rates[k[0]][k[1]] for k, bar in DIFFUSION_BARS.items() if rates[k[0]][k[1]] < bar}
    assert not low, (low, rates)


def test_diffusion_keeps_a_planted_prior_the_audit_can_find(diffusion) -> None:
    from pipelines.toyworld.data import audit_prompts
    from pipelines.toyworld.evaluate import diffusion_generate

    audits = audit_prompts()
    audits = [p for p in audits if p.group == "colour|circle"][:24] + \
        [p for p in audits if p.group == "colour|square"][:24]
    red = [judge(im).get("colour") == "red" for im in diffusion_generate(diffusion, audits)]
    assert np.mean(red[:24]) >= np.mean(red[24:]) + 0.2, (np.mean(red[:24]), np.mean(red[24:]))


def test_diffusion_seeds_give_different_pictures(diffusion) -> None:
    from pipelines.toyworld.evaluate import duplicate_rate

    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow square"]
    groups = [_diffuse(diffusion, [p] * 8, list(range(100, 108))) for p in prompts]
    assert duplicate_rate(groups) <= MAX_SEED_DUPLICATES


def test_diffusion_is_deterministic_per_seed(diffusion) -> None:
    a = _diffuse(diffusion, ["a red circle", "a blue square"], [3, 4])
    b = _diffuse(diffusion, ["a red circle", "a blue square"], [3, 4])
    assert np.array_equal(a, b)


def test_gan_loads_and_follows_labels() -> None:
    from pipelines.toyworld.gan import generate, load_generator

    model, config = load_generator(GAN_DIR)
    rng = np.random.default_rng(0)
    labels = [{"shape": str(rng.choice(config["attributes"]["shape"])),
               "colour": str(rng.choice(config["attributes"]["colour"]))} for _ in range(36)]
    seeds = list(range(36))
    images = generate(model, labels, seeds)
    assert images.shape == (36, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images[:4], generate(model, labels[:4], seeds[:4]))  # batch-independent
    verdicts = [judge(im) for im in images]
    colour = np.mean([v.get("colour") == lab["colour"] for v, lab in zip(verdicts, labels)])
    shape = np.mean([v.get("shape") == lab["shape"] for v, lab in zip(verdicts, labels)])
    assert colour >= 0.6 and shape >= 0.45, (colour, shape)


def test_assets_are_safetensors_with_reports_and_small() -> None:
    files = list(ASSETS.rglob("*"))
    assert not [f for f in files if f.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    weights = sum(f.stat().st_size for f in files if f.suffix == ".safetensors")
    assert weights <= 40e6
    for directory in (DIFFUSION_DIR, CLIP_WEIGHTS.parent, GAN_DIR):
        assert (directory / "training_loss.png").exists()
        assert json.loads((directory / "training_metrics.json").read_text())["train_seconds"] > 0
