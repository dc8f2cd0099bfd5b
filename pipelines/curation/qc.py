"""Finding QC (as RoentGen-v2 does for synthetic chest X-rays): does the image show what the manifest says?

For each checked attribute a manifest row states (e.g. ``nodule: present``, ``nodule_side: left``),
a classifier reads the value back from the image; a disagreement is a curation decision
``qc:<attribute>``. Two kinds of classifier plug in:

- a **pixel classifier**, ``module:callable`` taking one HxWx3 uint8 image and returning
  ``{attribute: value}`` (the toy world's judge is one: ``pipelines.toyworld.judge:judge``); it runs
  where the pixels are (the generation CPU stage), never in curation;
- **zero-shot** on the stored CLIP image embedding, with the same prompt vocabulary the bias audit
  uses (``curation.bias.attributes``), so real models need no extra weights.

Predictions travel as one JSON column (``qc``: attribute -> {"pred", "score"}) so the unit and
decisions schemas do not depend on which attributes a job checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pipelines.plugins import load_ref

PixelClassifier = Callable[[np.ndarray], Mapping[str, str]]
NOT_STATED = None


def load_pixel_classifier(ref: str) -> PixelClassifier:
    """``package.module:callable`` -> the callable (imported lazily, so the core names no plug-in)."""
    return load_ref(ref, "qc classifier")


def classify_pixels(fn: PixelClassifier, images: Sequence[np.ndarray], keys: Sequence[str]) -> list[str]:
    """One JSON ``qc`` cell per image: the classifier's value for each checked key (score 1: a
    deterministic classifier has no confidence to report)."""
    out = []
    for img in images:
        verdict = fn(img)
        out.append(json.dumps({k: {"pred": str(verdict.get(k, "unknown")), "score": 1.0} for k in keys},
                              sort_keys=True))
    return out


def classify_zero_shot(image_emb: np.ndarray, text_emb: Mapping[str, Mapping[str, np.ndarray]],
                       keys: Sequence[str], temperature: float = 100.0) -> list[str]:
    """JSON ``qc`` cells from L2-normalised image embeddings and, per key, one (ensembled, normalised)
    text embedding per value: softmax over the values' cosines, CLIP's zero-shot rule."""
    emb = np.asarray(image_emb, dtype=np.float64)
    if not np.isfinite(emb).all():
        bad = np.flatnonzero(~np.isfinite(emb).all(axis=1)).tolist()
        raise ValueError(f"qc zero-shot: non-finite image embeddings at rows {bad[:10]}")
    cells: list[dict[str, Any]] = [{} for _ in range(len(emb))]
    for key in keys:
        values = sorted(text_emb[key])
        t = np.stack([np.asarray(text_emb[key][v], dtype=np.float64) for v in values])
        logits = temperature * emb @ t.T
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        for i, row in enumerate(p):
            j = int(row.argmax())
            cells[i][key] = {"pred": values[j], "score": round(float(row[j]), 6)}
    return [json.dumps(c, sort_keys=True) for c in cells]


def qc_reasons(attributes: Sequence[Mapping[str, str] | None], cells: Sequence[str | None],
               keys: Sequence[str]) -> list[list[str]]:
    """``qc:<key>`` for each key the row states and the classifier reads differently.

    A key the row does not state is not checked (the manifest asked for nothing); a missing cell
    (a sample that failed) is left to the failure decision."""
    out = []
    for attrs, cell in zip(attributes, cells):
        attrs = dict(attrs or {})
        preds = json.loads(cell) if cell else {}
        out.append([f"qc:{k}" for k in keys
                    if k in attrs and k in preds and preds[k]["pred"] != str(attrs[k])])
    return out


def qc_summary(attributes: Sequence[Mapping[str, str] | None], cells: Sequence[str | None],
               keys: Sequence[str]) -> dict[str, Any]:
    """Agreement per checked key (n, agree, rate) and a confusion matrix per key: stated -> read."""
    agree: dict[str, list[int]] = {k: [0, 0] for k in keys}
    confusion: dict[str, dict[str, dict[str, int]]] = {k: {} for k in keys}
    for attrs, cell in zip(attributes, cells):
        if not cell:
            continue
        attrs, preds = dict(attrs or {}), json.loads(cell)
        for k in keys:
            if k in attrs and k in preds:
                stated, read = str(attrs[k]), preds[k]["pred"]
                agree[k][0] += 1
                agree[k][1] += stated == read
                row = confusion[k].setdefault(stated, {})
                row[read] = row.get(read, 0) + 1
    return {"keys": list(keys),
            "agreement": {k: {"n": n, "agree": a, "rate": (a / n) if n else None} for k, (n, a) in agree.items()},
            "confusion": confusion}


def merge_summaries(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One ``qc_summary`` from per-partition ones (counts add; rates recomputed)."""
    first = parts[0]
    agree = {k: [sum(p["agreement"][k]["n"] for p in parts), sum(p["agreement"][k]["agree"] for p in parts)]
             for k in first["keys"]}
    confusion: dict[str, dict[str, dict[str, int]]] = {k: {} for k in first["keys"]}
    for p in parts:
        for k, rows in p["confusion"].items():
            for stated, reads in rows.items():
                row = confusion[k].setdefault(stated, {})
                for read, c in reads.items():
                    row[read] = row.get(read, 0) + c
    return {**{k: v for k, v in first.items() if k not in ("agreement", "confusion")},
            "agreement": {k: {"n": n, "agree": a, "rate": (a / n) if n else None} for k, (n, a) in agree.items()},
            "confusion": confusion}


def unit_cells(ref: str, pngs: Sequence[bytes | None], keys: Sequence[str]) -> list[str | None]:
    """Pixel-classifier cells of one staged unit's PNGs (None where the sample has no image)."""
    import io

    from PIL import Image

    fn = load_pixel_classifier(ref)
    return [None if b is None else classify_pixels(fn, [np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))],
                                                   keys)[0] for b in pngs]
