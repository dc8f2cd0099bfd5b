"""Bias audit and rebalancing on perceived attributes, from the CLIP embeddings (no images).

Perceived attributes: for each attribute of the vocabulary (``{attribute: {value: prompt(s)}}``) a
zero-shot probability vector per sample, ``softmax(logit_scale * cos(image, value))`` over the
values' prompt-ensembled text embeddings; the sample's perceived value is the argmax.

Per prompt group (samples sharing the manifest ``attributes`` named in ``group_by``) and attribute,
with ``p`` the distribution of perceived values over ``K`` values and ``u = 1/K``:

- ``mad`` = mean_v |p_v - u|       (mean absolute deviation from uniform)
- ``max_dev`` = max_v |p_v - u|
- ``entropy`` = -sum_v p_v ln p_v  (nats; ``entropy_norm`` = entropy / ln K)
- ``kl_uniform`` = sum_v p_v ln(p_v / u) = ln K - entropy

each with a percentile bootstrap interval (resampling the group's samples: ``bootstrap``
multinomial draws from the observed distribution; :func:`pipelines.curation.stats.share_intervals`,
the same function the report uses for its shares), the sample count, and a test of uniformity
(:func:`pipelines.curation.stats.uniformity_test`: chi-square goodness of fit, exact multinomial for
small n). The deviation metrics are biased upwards near uniform (they cannot go below 0), so their
intervals say little there; a group is flagged ``skewed`` only when the test rejects uniformity at
``ALPHA`` (0.05).

Rebalancing selects, per group, the largest subset whose perceived distribution matches a target
(uniform or given weights): quotas by largest remainder, filled in a deterministic preference
order (best CLIP score or sample order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipelines.curation.rowwise import rowdot
from pipelines.curation.safety import prompt_embedding, softmax
from pipelines.curation.stats import UNIFORMITY_ALPHA, share_intervals, uniformity_test

TextEmbed = Callable[[Sequence[str]], np.ndarray]
METRICS = ("mad", "max_dev", "entropy", "entropy_norm", "kl_uniform")
ALPHA = UNIFORMITY_ALPHA  # significance level of the uniformity test that flags a group as skewed


# --------------------------------------------------------------------------- perceived attributes
def vocabulary(embed_text: TextEmbed, attributes: dict[str, dict[str, str | list[str]]]
               ) -> dict[str, tuple[list[str], np.ndarray]]:
    """attribute -> (values, (K, D) normalised text embeddings), values in config order."""
    out = {}
    for attr, vocab in attributes.items():
        values = list(vocab)
        emb = np.stack([prompt_embedding(embed_text, [p] if isinstance(p, str) else p) for p in vocab.values()])
        out[attr] = (values, emb)
    return out


def zero_shot(img_emb: np.ndarray, vocab: dict[str, tuple[list[str], np.ndarray]],
              logit_scale: float) -> dict[str, np.ndarray]:
    """attribute -> (n, K) probabilities."""
    img = img_emb / np.maximum(np.linalg.norm(img_emb, axis=1, keepdims=True), 1e-12)
    return {a: softmax(logit_scale * rowdot(img, emb)).astype(np.float32) for a, (_, emb) in vocab.items()}


# ------------------------------------------------------------------------------------ statistics
def metrics(p: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of distributions along the last axis (vectorised over leading axes)."""
    p = np.asarray(p, np.float64)
    k = p.shape[-1]
    u = 1.0 / k
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    h = -plogp.sum(axis=-1)
    return {
        "mad": np.abs(p - u).mean(axis=-1),
        "max_dev": np.abs(p - u).max(axis=-1),
        "entropy": h,
        "entropy_norm": h / np.log(k),
        "kl_uniform": np.log(k) - h,
    }


def summarise(labels: np.ndarray, k: int, bootstrap: int, conf: float,
              rng: np.random.Generator) -> dict[str, Any]:
    """Distribution of integer labels in [0, k), metrics, their percentile bootstrap intervals, and the
    uniformity test (``uniformity``: test, statistic, df, p_value, alpha, skewed)."""
    n = int(len(labels))
    counts = np.bincount(labels, minlength=k).astype(np.int64) if n else np.zeros(k, np.int64)
    test = uniformity_test(counts, ALPHA)
    if n == 0:
        return {"n": 0, "counts": counts.tolist(), "p": [None] * k, "p_ci": [[None, None]] * k,
                "metrics": {m: {"value": None, "ci": [None, None]} for m in METRICS}, "uniformity": test}
    p, lo, hi, boot = share_intervals(counts, bootstrap, conf, rng)
    est, bm = metrics(p), metrics(boot)
    a = (1 - conf) / 2
    return {
        "n": n,
        "counts": counts.tolist(),
        "p": p.tolist(),
        "p_ci": [[float(lo[v]), float(hi[v])] for v in range(k)],
        "metrics": {m: {"value": float(est[m]), "ci": [float(q) for q in np.quantile(bm[m], [a, 1 - a])]}
                    for m in METRICS},
        "uniformity": test,
    }


def audit(labels: dict[str, np.ndarray], values: dict[str, list[str]], groups: list[str], mask: np.ndarray,
          bootstrap: int, conf: float, seed: int) -> list[dict[str, Any]]:
    """One entry per (group, attribute) over the samples in ``mask``; groups and attributes sorted,
    each with its own seeded generator so an entry does not depend on which others exist."""
    g = np.asarray(groups, dtype=object)
    out = []
    for group in sorted(set(groups)):
        sel = mask & (g == group)
        for attr in sorted(labels):
            rng = np.random.default_rng([seed, _stable_hash(group), _stable_hash(attr)])
            entry = summarise(labels[attr][sel], len(values[attr]), bootstrap, conf, rng)
            out.append({"group": group, "attribute": attr, "values": values[attr], **entry})
    return out


def _stable_hash(s: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "big")


# ----------------------------------------------------------------------------------- rebalancing
def quotas(counts: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Largest per-value quotas ``q <= counts`` with ``q`` proportional to ``target`` (largest remainder).

    Values with a positive target but no samples cannot be matched; the target is renormalised over
    the others and their indices are returned as unachievable."""
    t = np.asarray(target, np.float64).copy()
    missing = [int(v) for v in np.flatnonzero((t > 0) & (counts == 0))]
    t[missing] = 0.0
    if t.sum() <= 0:
        return np.zeros_like(counts), missing
    t /= t.sum()
    pos = t > 0
    total = int(np.floor(np.min(counts[pos] / t[pos]) + 1e-9))
    while total > 0:
        raw = total * t
        q = np.floor(raw + 1e-9).astype(np.int64)
        rem = total - int(q.sum())
        order = np.lexsort((np.arange(len(t)), -(raw - q)))
        for v in order[:rem]:
            q[v] += 1
        if np.all(q <= counts):
            return q, missing
        total -= 1
    return np.zeros_like(counts), missing


def rebalance(labels: np.ndarray, k: int, groups: list[str], mask: np.ndarray, target: np.ndarray,
              priority: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Selected mask (subset of ``mask``) and a per-group record. ``priority``: lower is preferred."""
    g = np.asarray(groups, dtype=object)
    selected = np.zeros(len(labels), bool)
    records = []
    for group in sorted(set(g[mask])):
        idx = np.flatnonzero(mask & (g == group))
        counts = np.bincount(labels[idx], minlength=k)
        q, missing = quotas(counts, target)
        for v in range(k):
            members = idx[labels[idx] == v]
            members = members[np.argsort(priority[members], kind="stable")]
            selected[members[: q[v]]] = True
        records.append({"group": group, "before": counts.tolist(), "after": q.tolist(),
                        "unachievable": missing})
    return selected, records
