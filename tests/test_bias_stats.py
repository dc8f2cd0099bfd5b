"""Bias statistics against hand-computed values; bootstrap CI coverage; rebalancing quotas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.curation import bias
from pipelines.curation.groups import NO_GROUP, group_keys


def test_metrics_match_hand_computed_values():
    p = np.array([0.5, 0.25, 0.25])
    m = {k: float(v) for k, v in bias.metrics(p).items()}
    u = 1 / 3
    assert m["mad"] == pytest.approx((abs(0.5 - u) + 2 * abs(0.25 - u)) / 3)  # 1/9
    assert m["mad"] == pytest.approx(1 / 9)
    assert m["max_dev"] == pytest.approx(1 / 6)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # 1.5 ln 2
    assert m["entropy"] == pytest.approx(h) and m["entropy"] == pytest.approx(1.5 * math.log(2))
    assert m["entropy_norm"] == pytest.approx(h / math.log(3))
    assert m["kl_uniform"] == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75))
    uniform = {k: float(v) for k, v in bias.metrics(np.full(4, 0.25)).items()}
    assert uniform["mad"] == uniform["max_dev"] == pytest.approx(0) and uniform["kl_uniform"] == pytest.approx(0)
    one_hot = {k: float(v) for k, v in bias.metrics(np.array([1.0, 0.0])).items()}
    assert one_hot["entropy"] == 0 and one_hot["kl_uniform"] == pytest.approx(math.log(2))


def test_summarise_counts_and_interval_shape():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    s = bias.summarise(labels, 3, 500, 0.95, np.random.default_rng(0))
    assert s["n"] == 10 and s["counts"] == [6, 3, 1] and s["p"] == pytest.approx([0.6, 0.3, 0.1])
    for v, (lo, hi) in enumerate(s["p_ci"]):
        assert lo <= s["p"][v] <= hi
    assert s["metrics"]["kl_uniform"]["ci"][0] <= s["metrics"]["kl_uniform"]["value"]
    empty = bias.summarise(np.array([], np.int64), 3, 100, 0.95, np.random.default_rng(0))
    assert empty["n"] == 0 and empty["p"] == [None] * 3


def test_bootstrap_intervals_cover_the_truth():
    """200 simulated groups from a known skewed distribution: nominal 95% intervals must contain
    the true proportion and the true metrics in at least 90% of them."""
    true_p = np.array([0.55, 0.25, 0.12, 0.08])
    truth = {k: float(v) for k, v in bias.metrics(true_p).items()}
    rng = np.random.default_rng(123)
    hits = {"p0": 0, "p3": 0, **{m: 0 for m in ("mad", "kl_uniform", "entropy", "max_dev")}}
    for _ in range(200):
        labels = rng.choice(4, size=150, p=true_p)
        s = bias.summarise(labels, 4, 400, 0.95, rng)
        hits["p0"] += s["p_ci"][0][0] <= true_p[0] <= s["p_ci"][0][1]
        hits["p3"] += s["p_ci"][3][0] <= true_p[3] <= s["p_ci"][3][1]
        for m in ("mad", "kl_uniform", "entropy", "max_dev"):
            lo, hi = s["metrics"][m]["ci"]
            hits[m] += lo <= truth[m] <= hi
    coverage = {k: v / 200 for k, v in hits.items()}
    assert all(c >= 0.90 for c in coverage.values()), coverage


def test_group_keys():
    maps = [{"shape": "circle", "bg": "white"}, {"shape": "square"}, {}]
    assert group_keys(maps, ["shape"]) == ["shape=circle", "shape=square", "shape="]
    assert group_keys(maps, None) == ["bg=white,shape=circle", "shape=square", NO_GROUP]
    assert group_keys(maps, []) == [NO_GROUP] * 3


def test_one_group_key_for_curation_and_report():
    """curation's audit, its quotas and the report name a group with the same function."""
    from pipelines.curation.groups import group_key
    from pipelines.report import data

    assert data.group_key is group_key
    assert group_key({"shape": "circle", "bg": "white"}, ["shape", "bg"]) == "shape=circle,bg=white"
    assert group_key([("shape", "circle"), ("bg", "white")]) == "bg=white,shape=circle"  # Arrow map pairs
    assert group_key(None) == NO_GROUP
    assert group_key({}, ["shape"]) == "shape="


def test_curation_never_imports_the_report():
    """The report reads curation's outputs and shares its statistics; the reverse would be a cycle."""
    import re
    from pathlib import Path

    root = Path(bias.__file__).parent
    imports = re.compile(r"^\s*(from|import)\s+pipelines\.report", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if imports.search(p.read_text())]
    assert offenders == []


def test_quotas_match_target_and_never_exceed_counts():
    q, missing = bias.quotas(np.array([70, 10, 12, 8]), np.ones(4))
    assert q.tolist() == [8, 8, 8, 8] and missing == []
    q, _ = bias.quotas(np.array([50, 40, 10]), np.array([0.5, 0.3, 0.2]))
    assert q.tolist() == [25, 15, 10]
    q, missing = bias.quotas(np.array([5, 0, 7]), np.ones(3))
    assert q.tolist() == [5, 0, 5] and missing == [1]  # an absent value cannot be matched: renormalised


def test_rebalance_is_deterministic_and_prefers_by_priority():
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    groups = ["g"] * 8
    prio = np.array([7, 6, 5, 4, 3, 2, 1, 0])  # later samples preferred
    sel, rec = bias.rebalance(labels, 2, groups, np.ones(8, bool), np.ones(2), prio)
    assert np.flatnonzero(sel).tolist() == [2, 3, 4, 5, 6, 7]  # zeros 7, 5, 2 (best priority) + all ones
    assert rec == [{"group": "g", "before": [5, 3], "after": [3, 3], "unachievable": []}]
    sel2, _ = bias.rebalance(labels, 2, groups, np.ones(8, bool), np.ones(2), prio)
    assert (sel == sel2).all()
    part = np.array([True] * 4 + [False] * 4)  # only the masked samples are candidates
    sel3, _ = bias.rebalance(labels, 2, groups, part, np.ones(2), prio)
    assert not sel3[4:].any() and sel3.sum() == 2


def test_a_balanced_group_is_flagged_at_about_alpha_and_a_skewed_one_nearly_always():
    """200 simulated groups of n = 150: near-uniform (p = .26/.25/.25/.24, where the MAD / max-deviation
    intervals covered the truth only 51% / 71% of the time) vs clearly skewed; and small groups (exact test)."""
    rng = np.random.default_rng(7)

    def flagged(p, n, sims=200):
        out = [bias.summarise(rng.choice(len(p), size=n, p=p), len(p), 50, 0.95, rng)["uniformity"] for _ in range(sims)]
        assert all(u["alpha"] == bias.ALPHA == 0.05 for u in out)
        return out, sum(u["skewed"] for u in out) / sims

    near, rate = flagged([0.26, 0.25, 0.25, 0.24], 150)
    assert all(u["test"] == "chi-square" for u in near)
    assert 0.01 <= rate <= 0.12, rate  # about alpha: a balanced group is not called skewed
    _, rate = flagged([0.55, 0.25, 0.12, 0.08], 150)
    assert rate >= 0.98, rate
    small, rate = flagged([0.25] * 4, 12)  # expected count 3 per value: the exact multinomial test
    assert all(u["test"] == "exact multinomial" for u in small) and rate <= 0.08, rate
    _, rate = flagged([0.85, 0.05, 0.05, 0.05], 12)
    assert rate >= 0.9, rate


def test_uniformity_test_matches_scipy():
    from scipy import stats

    from pipelines.report import metrics as M

    for counts in ([3, 5], [0, 8], [1, 7], [2, 6]):  # exact multinomial with K = 2 is the exact binomial test
        assert M.uniformity_test(counts)["p_value"] == pytest.approx(stats.binomtest(counts[0], 8).pvalue)
    counts = [40, 35, 45, 30]
    u = M.uniformity_test(counts)
    assert u["test"] == "chi-square" and u["p_value"] == pytest.approx(stats.chisquare(counts).pvalue)
    assert M.uniformity_test([0, 0, 0])["skewed"] is None


def test_report_and_audit_share_one_interval_method():
    """The report's shares and curation's audit give the same intervals for the same counts and draws."""
    from pipelines.report import metrics as M

    labels = np.array([0] * 30 + [1] * 12 + [2] * 8)
    audit = bias.summarise(labels, 3, 1000, 0.95, np.random.default_rng(5))
    report = M.proportions_ci([str(v) for v in labels], ["0", "1", "2"], 1000, 0.95, seed=5)
    assert audit["p_ci"] == [[report[c]["lo"], report[c]["hi"]] for c in "012"]
