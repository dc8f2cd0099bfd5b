"""Backends behind the shared interface: the GAN backend on the toy-world generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.generate.backends import load_backend
from pipelines.config import GeneratorSpec
from pipelines.plan.samples import Sample

GAN = Path(__file__).resolve().parents[1] / "pipelines" / "toyworld" / "assets" / "gan"


def _sample(i: int, colour: str, shape: str) -> Sample:
    return Sample(sample_id=f"g_{i:05d}", prompt_id="g", index=i, prompt=f"a {colour} {shape}", negative_prompt=None,
                  seed=100 + i, steps=1, guidance_scale=0.0, height=32, width=32,
                  attributes={"colour": colour, "shape": shape, "group": "ignored"})


@pytest.mark.skipif(not (GAN / "generator.safetensors").exists(), reason="toy GAN not built")
def test_gan_backend_follows_labels_and_is_batch_invariant():
    from pipelines.toyworld.judge import judge

    backend = load_backend(GeneratorSpec(backend="gan", model=str(GAN), height=32, width=32))
    samples = [_sample(i, c, s) for i, (c, s) in enumerate(
        [(c, s) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")] * 3)]
    together = backend.generate(samples)
    alone = [backend.generate([s])[0] for s in samples[:6]]
    # Alone vs in a batch: float rounding of batched convolutions may flip a pixel by one level.
    assert max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(alone, together[:6])) <= 1
    colour_ok = np.mean([judge(img).get("colour") == s.attributes["colour"] for s, img in zip(samples, together)])
    assert colour_ok >= 0.8, colour_ok
    assert backend.info["backend"] == "gan" and backend.info["weights_sha256"]


TOY_CLIP = Path(__file__).resolve().parents[1] / "pipelines" / "toyworld" / "assets" / "clip"


@pytest.mark.skipif(not (TOY_CLIP / "toy-clip.safetensors").exists(), reason="toy CLIP not built")
def test_toy_clip_scores_matching_captions_above_shuffled_ones():
    """Through the pipeline's own embed module: CLIPScore of an image's caption beats a mismatched one."""
    from PIL import Image

    from pipelines.config import ClipSpec
    from pipelines.embed.clip import ClipEmbedder, clip_score
    from pipelines.toyworld.captions import caption
    from pipelines.toyworld.world import render, sample_attributes

    rng = np.random.default_rng(12345)
    attrs = [sample_attributes(rng) for _ in range(200)]
    images = [Image.fromarray(render(a, seed=1000 + i)) for i, a in enumerate(attrs)]
    captions = [caption(a, rng)[0] for a in attrs]
    e = ClipEmbedder(ClipSpec(model="toy-clip", pretrained=str(TOY_CLIP / "toy-clip.safetensors"),
                              model_config_file=str(TOY_CLIP / "toy-clip.json"), tokenizer=str(TOY_CLIP / "tokenizer")))
    img, txt = e.image_embeddings(images), e.text_embeddings(captions)
    matched = clip_score(img, txt)
    shuffled = clip_score(img, np.roll(txt, 1, axis=0))
    assert np.mean(matched > shuffled) >= 0.9
