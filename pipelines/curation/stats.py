"""Statistics that curation's bias audit and the audit report share, so both state the same numbers:
shares of categories with bootstrap intervals, the uniformity test that calls a group skewed, and
deterministic subsets. Pure numpy/scipy; curation owns them because the report may import curation,
never the reverse (:mod:`pipelines.report.metrics` re-exports them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def share_intervals(counts: Sequence[int] | np.ndarray, n_boot: int = 1000, level: float = 0.95,
                    rng: np.random.Generator | int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shares of K categories from their counts, with 95 % (``level``) percentile bootstrap intervals.

    The one interval method for shares of categories: the report's perceived-attribute shares and
    curation's bias audit both use it. Resampling the n labels with replacement is a multinomial draw
    with the observed shares, so the bootstrap is ``n_boot`` multinomial draws (O(n_boot * K)); an
    interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of the drawn shares, with no bias
    correction, clamping or widening. A share observed as 0 or 1 gets a zero-width interval, and near
    uniform the intervals of deviation metrics under-cover (they are bounded below by 0): whether a
    group is skewed is decided by :func:`uniformity_test`, not by an interval.
    Returns (shares, lo, hi, draws (n_boot, K) of shares); NaN shares and intervals when n = 0."""
    c = np.asarray(counts, np.int64)
    n = int(c.sum())
    if n == 0:
        nan = np.full(len(c), np.nan)
        return nan, nan, nan, np.zeros((0, len(c)))
    p = c / n
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    draws = gen.multinomial(n, p, size=n_boot) / n
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a], axis=0)
    return p, lo, hi, draws


UNIFORMITY_ALPHA = 0.05  # a group is called skewed when the uniformity test rejects at this level
EXACT_MAX_OUTCOMES = 200_000  # the exact multinomial test enumerates at most this many count vectors


def uniformity_test(counts: Sequence[int] | np.ndarray, alpha: float = UNIFORMITY_ALPHA) -> dict[str, Any]:
    """Test of "the K categories are equally likely" on observed counts.

    Pearson's chi-square goodness of fit (``scipy.stats.chisquare``) when every expected count n / K is
    at least 5; below that the exact multinomial test: the p-value is the total probability, under the
    uniform distribution, of every count vector no more likely than the observed one (for K = 2 this is
    the two-sided exact binomial test). ``skewed`` = p < ``alpha``. None when n = 0 or K < 2."""
    c = np.asarray(counts, np.int64)
    n, k = int(c.sum()), len(c)
    if n == 0 or k < 2:
        return {"test": None, "n": n, "p_value": None, "alpha": alpha, "skewed": None}
    from math import comb

    from scipy import stats

    chi2 = float(((c - n / k) ** 2).sum() / (n / k))
    if n / k < 5 and comb(n + k - 1, k - 1) <= EXACT_MAX_OUTCOMES:
        test, pval = "exact multinomial", _exact_uniform_p(c)
    else:
        test, pval = "chi-square", float(stats.chisquare(c).pvalue)
    return {"test": test, "n": n, "statistic": chi2, "df": k - 1, "p_value": pval, "alpha": alpha,
            "skewed": bool(pval < alpha)}


def _exact_uniform_p(c: np.ndarray) -> float:
    from scipy.special import gammaln

    n, k = int(c.sum()), len(c)
    outcomes = _compositions(n, k)
    logp = gammaln(n + 1) - gammaln(outcomes + 1).sum(1) - n * np.log(k)
    obs = gammaln(n + 1) - gammaln(c + 1).sum() - n * np.log(k)
    return float(min(1.0, np.exp(logp[logp <= obs + 1e-9]).sum()))


def _compositions(n: int, k: int) -> np.ndarray:
    """Every vector of k non-negative integers summing to n, as rows."""
    if k == 1:
        return np.array([[n]], np.int64)
    parts = [np.column_stack([np.full(len(rest := _compositions(n - first, k - 1)), first), rest])
             for first in range(n + 1)]
    return np.vstack(parts)


def subsample_indices(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A deterministic, sorted random subset of range(n) of at most ``size`` indices."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
