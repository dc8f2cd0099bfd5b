"""Dataset metrics on embeddings: pure numpy/scipy, no model, no I/O.

Conventions (the report states them next to every number):

* **CLIPScore** = ``100 * max(cos(image, text), 0)`` on L2-normalised open_clip embeddings, range
  [0, 100] (Hessel et al. 2021 with w = 100, as torchmetrics; computed by ``pipelines.embed.clip``).
* **Vendi score** (Friedman & Dieng 2023), order q = 1, cosine kernel on L2-normalised embeddings:
  ``exp(-sum_i l_i log l_i)`` over the eigenvalues ``l_i`` of ``K / n``, ``K_ij = <x_i, x_j>``. The non-zero
  eigenvalues of ``X X^T / n`` equal those of the d x d covariance form ``X^T X / n``, which is what is
  decomposed, so the cost is O(n d^2) rather than O(n^3). Range 1 (all identical) .. min(n, d) (orthogonal).
* **CMMD** (Jayasumana et al. 2024): squared MMD with a Gaussian RBF kernel
  ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))``, sigma = 10, on L2-normalised CLIP embeddings, reported x 1000
  (the paper's scale). Here with the **unbiased** U-statistic (within-set diagonals excluded), so it is ~0
  in expectation for two samples of one distribution and can be slightly negative.
* **FD** (Frechet distance, "FID on CLIP features"): ``||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})`` of
  Gaussians fitted to the two feature sets. Biased by sample size, so the report computes it on a fixed,
  stated number of samples per side.
* **PRDC** (Naeem et al. 2020), k = 5: precision, recall, density, coverage with k-NN balls in Euclidean
  distance, strict ``<`` as the reference implementation.
* Confidence intervals: percentile bootstrap, 95 %, fixed seed (deterministic); shares of categories use
  :func:`proportions_ci`, the one interval method the report and curation's bias audit share.

Non-finite input (NaN, inf) is an error everywhere (:class:`NonFiniteError`, naming the rows): one NaN row
would otherwise make a minimum or an eigen-decomposition silently wrong (PRDC coverage 0.0 for the whole set).

Everything that touches n x m distances works in row blocks, so memory is O(block * m), never O(n * m).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from pipelines.curation.stats import (  # noqa: F401 - one implementation, re-exported here
    EXACT_MAX_OUTCOMES,
    UNIFORMITY_ALPHA,
    share_intervals,
    subsample_indices,
    uniformity_test,
)

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0
PRDC_K = 5
BLOCK = 512  # rows per block of a distance matrix: memory O(BLOCK * m)
BOOT_CHUNK = 2_000_000  # values resampled at a time by the bootstrap


class NonFiniteError(ValueError):
    """A metric's input holds NaN or inf; ``rows`` are the offending row indices of that input."""

    def __init__(self, what: str, rows: list[int], n: int, count: int | None = None):
        """``rows``: the offending rows (or the first of them, with ``count`` saying how many there are)."""
        self.what, self.rows, self.n = what, rows, n
        count = len(rows) if count is None else count
        shown = ", ".join(map(str, rows[:10])) + (", ..." if count > 10 else "")
        super().__init__(f"{what}: non-finite values (NaN or inf) in {count} of {n} rows: {shown}")


def nonfinite_rows(x: np.ndarray | Sequence[float]) -> list[int]:
    """Indices of the rows (of a 1-d or 2-d array) holding NaN or inf."""
    a = np.asarray(x, np.float64)
    bad = ~np.isfinite(a)
    return np.flatnonzero(bad.reshape(len(a), -1).any(1) if a.ndim > 1 else bad).tolist() if a.size else []


def check_finite(x: np.ndarray | Sequence[float], what: str) -> np.ndarray:
    """``x`` as float64, or :class:`NonFiniteError` naming the rows that hold NaN or inf."""
    a = np.asarray(x, np.float64)
    if not np.isfinite(a).all():
        raise NonFiniteError(what, nonfinite_rows(np.atleast_1d(a)), len(np.atleast_1d(a)))
    return a


def normalise(x: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float64."""
    x = check_finite(x, what)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array (n, d), got shape {x.shape}")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


# ---------------------------------------------------------------- diversity


def vendi_score(x: np.ndarray, normalised: bool = False) -> float:
    """Vendi score (q = 1) with the cosine kernel, via the d x d covariance form.

    ``x``: (n, d) embeddings. Identical rows give 1, n mutually orthogonal rows give n.
    """
    x = check_finite(x, "vendi_score input") if normalised else normalise(x, "vendi_score input")
    n = x.shape[0]
    if n == 0:
        return float("nan")
    cov = x.T @ x / n  # same non-zero spectrum as K / n, K = X X^T
    lam = np.linalg.eigvalsh(cov)
    lam = lam[lam > 1e-12]
    lam = lam / lam.sum()  # trace(K / n) = 1 for unit rows; renormalise against rounding
    return float(np.exp(-np.sum(lam * np.log(lam))))


def vendi_score_kernel(k: np.ndarray) -> float:
    """Vendi score from an explicit n x n similarity matrix with unit diagonal (the O(n^3) definition)."""
    k = check_finite(k, "vendi_score_kernel input")
    n = k.shape[0]
    lam = np.linalg.eigvalsh(k / n)
    lam = lam[lam > 1e-12]
    return float(np.exp(-np.sum(lam * np.log(lam))))


# ---------------------------------------------------------------- distances between sets


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _kernel_sum(a: np.ndarray, b: np.ndarray, gamma: float, exclude_diagonal: bool) -> float:
    """Sum of exp(-gamma ||a_i - b_j||^2) over all pairs (diagonal left out when a is b), in row blocks."""
    total = 0.0
    for s in range(0, a.shape[0], BLOCK):
        blk = np.exp(-gamma * _sq_dists(a[s:s + BLOCK], b))
        if exclude_diagonal:
            idx = np.arange(blk.shape[0])
            blk[idx, s + idx] = 0.0
        total += float(blk.sum())
    return total


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, sigma: float = CMMD_SIGMA) -> float:
    """Unbiased estimate of squared MMD with the Gaussian RBF kernel (bandwidth ``sigma``)."""
    x, y = check_finite(x, "MMD first set"), check_finite(y, "MMD second set")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("unbiased MMD needs at least 2 samples per set")
    gamma = 1.0 / (2.0 * sigma * sigma)
    kxx = _kernel_sum(x, x, gamma, True) / (m * (m - 1))
    kyy = _kernel_sum(y, y, gamma, True) / (n * (n - 1))
    kxy = _kernel_sum(x, y, gamma, False) / (m * n)
    return kxx + kyy - 2.0 * kxy


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD: unbiased RBF MMD^2 on L2-normalised embeddings, x ``scale`` (1000)."""
    return scale * mmd2_unbiased(normalise(x, "CMMD first set"), normalise(y, "CMMD second set"), sigma)


def gaussian_stats(x: np.ndarray, what: str = "features") -> tuple[np.ndarray, np.ndarray]:
    x = check_finite(x, what)
    return x.mean(0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Frechet distance of N(mu1, s1) and N(mu2, s2).

    ``Tr((S1 S2)^{1/2}) = Tr((S1^{1/2} S2 S1^{1/2})^{1/2})``; the inner matrix is symmetric PSD, so its
    eigenvalues are real and >= 0 (no complex sqrtm round-off as with scipy.linalg.sqrtm).
    """
    for v, what in ((mu1, "FD mean 1"), (s1, "FD covariance 1"), (mu2, "FD mean 2"), (s2, "FD covariance 2")):
        check_finite(v, what)
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    tr_cross = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_cross), 0.0)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """FD between Gaussians fitted to two feature sets (rows = samples), on the features as given."""
    return frechet_distance_stats(*gaussian_stats(x, "FD first set"), *gaussian_stats(y, "FD second set"))


def knn_radii(x: np.ndarray, k: int = PRDC_K, what: str = "k-NN input") -> np.ndarray:
    """Distance of each row to its k-th nearest other row (Euclidean)."""
    x = check_finite(x, what)
    if x.shape[0] <= k:
        raise ValueError(f"need more than k={k} samples, got {x.shape[0]}")
    out = np.empty(x.shape[0])
    for s in range(0, x.shape[0], BLOCK):
        d = _sq_dists(x[s:s + BLOCK], x)
        out[s:s + BLOCK] = np.sqrt(np.partition(d, k, axis=1)[:, k])  # index 0 is the point itself
    return out


def prdc(real: np.ndarray, fake: np.ndarray, k: int = PRDC_K) -> dict[str, float]:
    """Precision, recall, density, coverage (Naeem et al. 2020) of ``fake`` against ``real``."""
    real, fake = check_finite(real, "PRDC real set"), check_finite(fake, "PRDC fake set")
    r_rad, f_rad = knn_radii(real, k, "PRDC real set"), knn_radii(fake, k, "PRDC fake set")
    inside_count = np.zeros(fake.shape[0])  # per fake: real balls containing it
    real_covered_by_fake_ball = np.zeros(real.shape[0], bool)  # recall
    real_nn = np.full(real.shape[0], np.inf)  # per real: nearest fake (coverage)
    for s in range(0, fake.shape[0], BLOCK):
        d = np.sqrt(_sq_dists(real, fake[s:s + BLOCK]))  # (R, Fb)
        inside_count[s:s + BLOCK] = (d < r_rad[:, None]).sum(0)
        real_covered_by_fake_ball |= (d < f_rad[None, s:s + BLOCK]).any(1)
        real_nn = np.minimum(real_nn, d.min(1))
    return {
        "precision": float((inside_count > 0).mean()),
        "recall": float(real_covered_by_fake_ball.mean()),
        "density": float(inside_count.sum() / (k * fake.shape[0])),
        "coverage": float((real_nn < r_rad).mean()),
    }


def top1_cosine(x: np.ndarray, ref: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x``: the highest cosine similarity to a row of ``ref`` and that row's index.

    ``exclude_self``: ``x`` is ``ref`` and the match of a row with itself does not count.
    """
    x, ref = normalise(x, "top-1 cosine queries"), normalise(ref, "top-1 cosine reference")
    best = np.full(x.shape[0], -np.inf)
    arg = np.zeros(x.shape[0], np.int64)
    if ref.shape[0] == 0:
        return best, arg
    for s in range(0, x.shape[0], BLOCK):
        sim = x[s:s + BLOCK] @ ref.T
        if exclude_self:
            idx = np.arange(sim.shape[0])
            sim[idx, s + idx] = -np.inf
        arg[s:s + BLOCK] = sim.argmax(1)
        best[s:s + BLOCK] = sim[np.arange(sim.shape[0]), arg[s:s + BLOCK]]
    return best, arg


# ---------------------------------------------------------------- statistics


def bootstrap_ci(values: Sequence[float] | np.ndarray, stat: Callable[[np.ndarray], np.ndarray] | None = None,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` (default: mean) of a 1-d sample.

    ``stat`` takes a (B, n) array of resamples and returns B values (vectorised).
    """
    v = check_finite(values, "bootstrap sample")
    if v.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    per = max(1, min(n_boot, BOOT_CHUNK // v.size))  # resamples drawn at a time: memory O(BOOT_CHUNK), not O(B n)
    parts = []
    for start in range(0, n_boot, per):
        resamples = v[rng.integers(0, v.size, size=(min(per, n_boot - start), v.size))]
        parts.append(resamples.mean(1) if stat is None else np.asarray(stat(resamples)))
    stats = np.concatenate(parts)
    a = (1 - level) / 2
    lo, hi = np.quantile(stats, [a, 1 - a])
    return float(lo), float(hi)


def proportions_ci(labels: Sequence[str], categories: Sequence[str] | None = None, n_boot: int = 1000,
                   level: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """Share of each category with a percentile bootstrap interval (:func:`share_intervals`)."""
    return proportions_from_counts(Counter(labels), categories, n_boot, level, seed)


def proportions_from_counts(counts: Mapping[str, int], categories: Sequence[str] | None = None, n_boot: int = 1000,
                            level: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """:func:`proportions_ci` from counts per category (what a streamed pass keeps instead of the labels)."""
    cats = list(categories) if categories is not None else sorted(k for k, v in counts.items() if v)
    c = np.array([counts.get(k, 0) for k in cats], np.int64)
    p, lo, hi, _ = share_intervals(c, n_boot, level, seed)
    return {k: {"share": float(p[i]), "lo": float(lo[i]), "hi": float(hi[i]), "count": int(c[i])}
            for i, k in enumerate(cats)}


def summary(values: Sequence[float] | np.ndarray, seed: int = 0) -> dict[str, float]:
    """n, mean (95 % bootstrap CI), std, min, quartiles, max of a 1-d sample.

    NaN marks a missing value (a record without that score): left out and counted in ``missing``, so the
    summary says how many it lacks. An infinite value is an error (:class:`NonFiniteError`)."""
    v = np.asarray(values, np.float64)
    if np.isinf(v).any():
        raise NonFiniteError("summary input", np.flatnonzero(np.isinf(v)).tolist(), len(v))
    missing = int(np.isnan(v).sum())
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"n": 0, "missing": missing} if missing else {"n": 0}
    lo, hi = bootstrap_ci(v, seed=seed)
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {**({"missing": missing} if missing else {}), "n": int(v.size), "mean": float(v.mean()), "mean_ci_lo": lo, "mean_ci_hi": hi,
            "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "min": float(q[0]), "q25": float(q[1]),
            "median": float(q[2]), "q75": float(q[3]), "max": float(q[4])}


def auc(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties counted 1/2 (Mann-Whitney U / mn)."""
    pos, neg = check_finite(pos, "AUC positive scores"), check_finite(neg, "AUC negative scores")
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy.stats.rankdata's default)."""
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return ((upper - counts + 1 + upper) / 2.0)[inv]


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two labelings of the same items (1 = perfect, 0 = chance level)."""
    a, b = list(a), list(b)
    if not a:
        return float("nan")
    cats = sorted(set(a) | set(b))
    po = float(np.mean([x == y for x, y in zip(a, b)]))
    pe = sum((a.count(c) / len(a)) * (b.count(c) / len(b)) for c in cats)
    return float("nan") if pe >= 1 else (po - pe) / (1 - pe)
