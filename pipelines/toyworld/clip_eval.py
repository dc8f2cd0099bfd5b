"""Zero-shot evaluation of an open_clip model on toy-world images (any CLIP, not only ours)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from pipelines.toyworld.world import COLOURS, SHAPES

# Class prompts are ensembled over the *other* attribute ("a red circle", "a blue circle", ...
# for the class circle) so that a prior tying a shape to a colour does not leak into shape
# classification (the planted circle->red skew otherwise pulls "a circle" towards red).
ZERO_SHOT = {
    "colour": {c: [f"a {c} shape"] + [f"a {c} {s}" for s in SHAPES] for c in COLOURS},
    "shape": {s: [f"a {s}"] + [f"a {c} {s}" for c in COLOURS] for s in SHAPES},
}


@torch.no_grad()
def image_features(model: Any, preprocess: Any, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings of uint8 HxWx3 images via the model's own preprocess."""
    feats = []
    for i in range(0, len(images), batch):
        x = torch.stack([preprocess(Image.fromarray(im)) for im in images[i: i + batch]])
        feats.append(model.encode_image(x, normalize=True))
    return torch.cat(feats)


@torch.no_grad()
def text_features(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """L2-normalised text embeddings."""
    return model.encode_text(tokenizer(texts), normalize=True)


@torch.no_grad()
def class_embeddings(model: Any, tokenizer: Any, attribute: str) -> tuple[list[str], torch.Tensor]:
    """Prompt-ensembled, normalised class embeddings for one attribute."""
    prompts = ZERO_SHOT[attribute]
    labels = list(prompts)
    emb = torch.stack([text_features(model, tokenizer, prompts[c]).mean(0) for c in labels])
    return labels, torch.nn.functional.normalize(emb, dim=-1)


def zero_shot(model: Any, tokenizer: Any, feats: torch.Tensor, attribute: str) -> list[str]:
    """Zero-shot label per image embedding for `attribute` (colour or shape)."""
    labels, emb = class_embeddings(model, tokenizer, attribute)
    return [labels[i] for i in (feats @ emb.T).argmax(dim=1).tolist()]


@torch.no_grad()
def pair_margin(model: Any, tokenizer: Any, feats: torch.Tensor, matched: list[str],
                mismatched: list[str]) -> np.ndarray:
    """Cosine(image, matching caption) - cosine(image, mismatched caption), per image."""
    pos = (feats * text_features(model, tokenizer, matched)).sum(-1)
    neg = (feats * text_features(model, tokenizer, mismatched)).sum(-1)
    return (pos - neg).numpy()
