"""Metric implementations against hand-computed values and brute-force reference code."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.report import metrics as m


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ Vendi


def test_vendi_identical_is_one_and_orthogonal_is_n():
    v = _rng().normal(size=16)
    assert m.vendi_score(np.tile(v, (10, 1))) == pytest.approx(1.0, abs=1e-9)
    for n in (1, 3, 7):
        assert m.vendi_score(np.eye(n, 16) * 3.0) == pytest.approx(n, abs=1e-9)


def test_vendi_two_clusters_and_dual_form_equals_kernel_form():
    # two equal clusters of identical points along orthogonal directions: exactly 2
    x = np.vstack([np.tile([1.0, 0, 0], (5, 1)), np.tile([0, 2.0, 0], (5, 1))])
    assert m.vendi_score(x) == pytest.approx(2.0, abs=1e-9)
    # unequal clusters 1:3 -> exp(H(1/4, 3/4))
    x = np.vstack([[1.0, 0.0]] + [[0.0, 1.0]] * 3)
    assert m.vendi_score(x) == pytest.approx(np.exp(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75))), abs=1e-9)
    y = m.normalise(_rng(1).normal(size=(40, 8)))
    assert m.vendi_score(y) == pytest.approx(m.vendi_score_kernel(y @ y.T), rel=1e-9)


# ------------------------------------------------------------------ CMMD


def _mmd_bruteforce(x, y, sigma):
    def k(a, b):
        return np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / (2 * sigma**2))
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m_, n_ = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (m_ * (m_ - 1)) + (kyy.sum() - np.trace(kyy)) / (n_ * (n_ - 1))
            - 2 * kxy.mean())


def test_mmd_unbiased_matches_bruteforce_across_blocks(monkeypatch):
    x, y = _rng(2).normal(size=(37, 5)), _rng(3).normal(size=(23, 5)) + 0.3
    want = _mmd_bruteforce(x, y, 1.5)
    assert m.mmd2_unbiased(x, y, 1.5) == pytest.approx(want, rel=1e-10)
    monkeypatch.setattr(m, "BLOCK", 4)  # the blocked path and its diagonal bookkeeping
    assert m.mmd2_unbiased(x, y, 1.5) == pytest.approx(want, rel=1e-10)


def test_cmmd_self_is_zero_and_grows_with_shift():
    base = _rng(4).normal(size=(400, 16))
    half_a, half_b = base[:200], base[200:]
    assert m.cmmd(base, base) == pytest.approx(0.0, abs=0.05)  # same set: -O(1/n) by the U-statistic
    assert abs(m.cmmd(half_a, half_b)) < 0.5  # two samples of one distribution
    values = []
    for shift in (0.0, 0.25, 0.5, 1.0):
        shifted = half_b.copy()
        shifted[:, 0] += shift * 4
        values.append(m.cmmd(half_a, shifted))
    assert all(b > a for a, b in zip(values, values[1:])), values
    # known value: two point masses on unit vectors at distance d -> 1000 * 2 * (1 - exp(-d^2 / 200))
    p, q = np.tile([1.0, 0.0], (10, 1)), np.tile([0.0, 1.0], (10, 1))
    assert m.cmmd(p, q) == pytest.approx(1000 * 2 * (1 - np.exp(-2 / 200)), rel=1e-9)


# ------------------------------------------------------------------ FD


def test_fd_closed_form_and_identical_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    want = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert m.frechet_distance_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)
    # a non-diagonal pair against scipy's sqrtm
    from scipy.linalg import sqrtm

    r = _rng(5)
    s1 = np.cov(r.normal(size=(50, 4)), rowvar=False)
    s2 = np.cov(r.normal(size=(50, 4)) @ r.normal(size=(4, 4)), rowvar=False)
    ref = np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2)))
    assert m.frechet_distance_stats(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(ref, rel=1e-7)
    x = r.normal(size=(3000, 4))
    assert m.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    y = r.normal(size=(3000, 4))
    assert m.frechet_distance(x, y) < 0.05  # same Gaussian, independent samples: small bias only
    assert m.frechet_distance(x, y + 1.0) == pytest.approx(4.0, abs=0.15)


# ------------------------------------------------------------------ PRDC


def _prdc_bruteforce(real, fake, k):
    def dist(a, b):
        return np.sqrt(np.maximum(np.sum((a[:, None] - b[None]) ** 2, -1), 0))
    rr, ff, rf = dist(real, real), dist(fake, fake), dist(real, fake)
    r_rad = np.sort(rr, 1)[:, k]
    f_rad = np.sort(ff, 1)[:, k]
    return {"precision": (rf < r_rad[:, None]).any(0).mean(), "recall": (rf < f_rad[None]).any(1).mean(),
            "density": (rf < r_rad[:, None]).sum(0).mean() / k, "coverage": (rf.min(1) < r_rad).mean()}


def test_prdc_matches_bruteforce(monkeypatch):
    real, fake = _rng(6).normal(size=(60, 3)), _rng(7).normal(size=(45, 3)) * 1.3 + 0.4
    want = _prdc_bruteforce(real, fake, 5)
    for block in (1024, 7):
        monkeypatch.setattr(m, "BLOCK", block)
        got = m.prdc(real, fake, 5)
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_prdc_same_distribution_and_disjoint():
    r = _rng(8)
    real, fake = r.normal(size=(500, 4)), r.normal(size=(500, 4))
    got = m.prdc(real, fake)
    assert got["precision"] > 0.8 and got["recall"] > 0.8 and got["coverage"] > 0.8
    assert 0.7 < got["density"] < 1.3  # ~1 in expectation for one distribution
    far = m.prdc(real, fake + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


# ------------------------------------------------------------------ similarity, statistics


def test_top1_cosine_finds_copies_and_excludes_self():
    ref = m.normalise(_rng(9).normal(size=(30, 8)))
    x = ref[[3, 17]] * 5.0
    sim, idx = m.top1_cosine(x, ref)
    assert list(idx) == [3, 17] and np.allclose(sim, 1.0)
    sim_self, idx_self = m.top1_cosine(ref, ref, exclude_self=True)
    assert (idx_self != np.arange(30)).all() and (sim_self < 1.0).all()


def test_bootstrap_mean_ci_covers_truth_at_nominal_rate():
    r = _rng(10)
    hits = 0
    for i in range(200):
        lo, hi = m.bootstrap_ci(r.normal(2.0, 1.0, size=60), n_boot=400, seed=i)
        hits += lo <= 2.0 <= hi
    assert hits >= 0.9 * 200
    assert m.bootstrap_ci([5.0] * 10) == (5.0, 5.0)
    v = r.normal(size=500)
    whole = m.bootstrap_ci(v, seed=4)
    m_chunk, m.BOOT_CHUNK = m.BOOT_CHUNK, 700  # one resample per chunk: same stream, same interval
    try:
        assert m.bootstrap_ci(v, seed=4) == pytest.approx(whole, abs=1e-12)
    finally:
        m.BOOT_CHUNK = m_chunk
    assert m.bootstrap_ci([1.0, 2.0, 3.0], seed=1) == m.bootstrap_ci([1.0, 2.0, 3.0], seed=1)


def test_proportions_ci_and_coverage():
    got = m.proportions_ci(["a"] * 30 + ["b"] * 10, ["a", "b", "c"])
    assert got["a"]["share"] == 0.75 and got["b"]["count"] == 10 and got["c"]["share"] == 0.0
    assert got["a"]["lo"] < 0.75 < got["a"]["hi"] and got["c"]["hi"] == 0.0
    r = _rng(11)
    hits = 0
    for i in range(200):
        labels = r.choice(["x", "y", "z"], p=[0.5, 0.3, 0.2], size=80)
        ci = m.proportions_ci(labels.tolist(), ["x", "y", "z"], n_boot=400, seed=i)["y"]
        hits += ci["lo"] <= 0.3 <= ci["hi"]
    assert hits >= 0.9 * 200


def test_auc_kappa_summary():
    assert m.auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert m.auc([0, 1], [2, 3]) == 0.0
    assert m.auc([1, 1], [1, 1]) == 0.5
    assert m.auc([2, 0], [1]) == 0.5
    assert m.cohen_kappa(list("aabb"), list("aabb")) == 1.0
    # hand-computed: po = 0.5, pe = 0.5*0.5 + 0.5*0.5 = 0.5 -> 0
    assert m.cohen_kappa(list("aabb"), list("abab")) == 0.0
    s = m.summary([1.0, 2.0, 3.0, 4.0])
    assert s["n"] == 4 and s["mean"] == 2.5 and s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0
    assert m.summary([])["n"] == 0
    idx = m.subsample_indices(100, 10, seed=3)
    assert len(idx) == 10 and (np.diff(idx) > 0).all() and (idx == m.subsample_indices(100, 10, seed=3)).all()
    assert (m.subsample_indices(5, 10) == np.arange(5)).all()


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    v = _rng(12).integers(0, 5, size=40).astype(float)
    assert np.allclose(m._average_ranks(v), rankdata(v))
    pos, neg = _rng(13).normal(size=30), _rng(14).normal(size=20) - 0.5
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert m.auc(pos, neg) == pytest.approx(brute)


# ------------------------------------------------------------------ non-finite input


def test_every_metric_rejects_non_finite_input_naming_the_rows():
    x, y = _rng(7).normal(size=(40, 6)), _rng(8).normal(size=(30, 6))
    bad = x.copy()
    bad[3, 2], bad[17, 0] = np.nan, np.inf
    before = m.prdc(x, y)
    calls = {
        "prdc real": lambda: m.prdc(bad, y), "prdc fake": lambda: m.prdc(y, bad),  # was coverage 0.0, silently
        "knn_radii": lambda: m.knn_radii(bad), "vendi": lambda: m.vendi_score(bad),
        "vendi normalised": lambda: m.vendi_score(bad, normalised=True),
        "vendi kernel": lambda: m.vendi_score_kernel(np.where(np.eye(40) > 0, 1.0, np.nan)),
        "cmmd": lambda: m.cmmd(bad, y), "mmd": lambda: m.mmd2_unbiased(y, bad), "fd": lambda: m.frechet_distance(bad, y),
        "top1": lambda: m.top1_cosine(y, bad), "normalise": lambda: m.normalise(bad),
        "bootstrap": lambda: m.bootstrap_ci(bad[:, 2]), "auc": lambda: m.auc(bad[:, 2], [0.5]),
    }
    for name, call in calls.items():
        with pytest.raises(m.NonFiniteError, match=r"non-finite values \(NaN or inf\) in \d+ of \d+ rows") as e:
            call()
        assert e.value.rows in ([3, 17], [17], [3], list(range(40))), (name, e.value.rows)
    with pytest.raises(m.NonFiniteError) as e:
        m.prdc(bad, y)
    assert e.value.rows == [3, 17] and "PRDC real set" in str(e.value)
    assert m.prdc(x, y) == before  # finite input unchanged
    with pytest.raises(m.NonFiniteError, match="summary input"):
        m.summary([1.0, np.inf])
    assert m.summary([1.0, np.nan, 3.0]) | {} == m.summary([1.0, 3.0]) | {"missing": 1}  # NaN = missing, counted
