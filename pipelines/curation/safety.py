"""Image safety from the CLIP embeddings already computed (no second pass over the images).

The Stable Diffusion safety checker's mechanism, made explicit and configurable: each concept is a
list of text prompts whose mean normalised text embedding is compared with the image embedding.

- without ``negatives``: the score is the cosine ``cos(image, concept)``, flagged at or above the
  concept's threshold (as the SD checker does with its per-concept thresholds);
- with ``negatives``: the score is the softmax probability of the concept against the contrast
  prompts (``logit_scale * cosine`` logits), flagged at or above a threshold in [0, 1]. Relative
  scores are much less sensitive to where a particular CLIP puts its cosines.

An optional linear head (``classifier``: safetensors ``weight`` (C, D), ``bias`` (C,), metadata
``names``) adds sigmoid probabilities ``clf:<name>``. Images are never altered: the mode decides
whether a flagged sample is kept with a flag (``report``) or dropped with a reason (``filter``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.config import SafetyClassifierSpec, SafetySpec
from pipelines.curation.rowwise import rowdot

TextEmbed = Callable[[Sequence[str]], np.ndarray]


def _norm(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prompt_embedding(embed_text: TextEmbed, prompts: Sequence[str]) -> np.ndarray:
    """Prompt-ensembled text embedding: the normalised mean of the prompts' normalised embeddings."""
    return _norm(_norm(embed_text(list(prompts))).mean(axis=0))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Classifier:
    names: list[str]
    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    threshold: float

    def scores(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        logits = rowdot(emb.astype(np.float32), self.weight) + self.bias
        prob = 1.0 / (1.0 + np.exp(-logits))
        return {f"clf:{n}": prob[:, k].astype(np.float32) for k, n in enumerate(self.names)}


def load_classifier(spec: SafetyClassifierSpec) -> Classifier:
    from safetensors import safe_open

    from pipelines.errors import SpecError

    try:
        with safe_open(spec.path, framework="numpy") as f:
            meta = f.metadata() or {}
            weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
    except FileNotFoundError:
        raise SpecError(f"{spec.path}: safety classifier not found") from None
    names = json.loads(meta.get("names", "null")) or [f"class{k}" for k in range(weight.shape[0])]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(names) != weight.shape[0]:
        raise SpecError(f"{spec.path}: classifier needs weight (C, D), bias (C,) and C names")
    return Classifier(names, weight.astype(np.float32), bias.astype(np.float32), spec.threshold)


def save_classifier(path: str, names: list[str], weight: np.ndarray, bias: np.ndarray) -> None:
    """Write a head in the format ``load_classifier`` reads (for training scripts and tests)."""
    from safetensors.numpy import save_file

    save_file({"weight": np.ascontiguousarray(weight, np.float32), "bias": np.ascontiguousarray(bias, np.float32)},
              path, metadata={"names": json.dumps(names)})


def concept_scores(img_emb: np.ndarray, spec: SafetySpec, embed_text: TextEmbed,
                   logit_scale: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(score per concept per sample, threshold per concept), including classifier outputs."""
    img = _norm(img_emb)
    scores: dict[str, np.ndarray] = {}
    thresholds: dict[str, float] = {}
    scale = spec.logit_scale or logit_scale
    for c in spec.concepts:
        pos = prompt_embedding(embed_text, c.prompts)
        if c.negatives:
            neg = _norm(embed_text(list(c.negatives)))
            logits = scale * rowdot(img, np.vstack([pos[None], neg]))
            scores[c.name] = softmax(logits)[:, 0].astype(np.float32)
        else:
            scores[c.name] = rowdot(img, pos[None])[:, 0].astype(np.float32)
        thresholds[c.name] = float(c.threshold)
    if spec.classifier is not None:
        clf = load_classifier(spec.classifier)
        for name, s in clf.scores(img).items():
            scores[name], thresholds[name] = s, clf.threshold
    return scores, thresholds


def flagged(scores: dict[str, np.ndarray], thresholds: dict[str, float], n: int) -> list[list[str]]:
    """Names of the concepts each sample is flagged for (score >= threshold), in config order."""
    out: list[list[str]] = [[] for _ in range(n)]
    for name, s in scores.items():
        for k in np.flatnonzero(s >= thresholds[name]):
            out[int(k)].append(name)
    return out


def calibrate_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold maximising F1 on a labelled calibration set (a helper to choose thresholds)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    cands = np.unique(s)
    best, best_f1 = float(cands[-1]), -1.0
    for t in cands:
        pred = s >= t
        tp = float((pred & y).sum())
        f1 = 2 * tp / max(pred.sum() + y.sum(), 1)
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best
