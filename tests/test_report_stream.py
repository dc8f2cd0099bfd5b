"""The report's bounded accumulators (pipelines/report/stream.py) and its defensive reading of extra
decisions columns: exact where they claim to be, the same deterministic sample whatever the batching or
read order, and equal to the whole-series computation while a series fits its sample."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.report import metrics as M
from pipelines.report.data import extra_columns
from pipelines.report.stream import DupCounter, IdList, Reservoir, ScoreStats, Smallest, sample_keys, string_codes


def _feed(acc, keys, pos, vals, cuts):
    for a, b in zip([0, *cuts], [*cuts, len(keys)]):
        acc.add(keys[a:b], pos[a:b], vals[a:b])
    return acc


def test_reservoir_is_the_lowest_keys_in_stream_order_whatever_the_batches():
    ids = [f"s{i:05d}" for i in range(1000)]
    keys, pos = sample_keys(ids), np.arange(1000)
    vals = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    want = np.sort(np.argsort(keys, kind="stable")[:50])
    for cuts in ([], [7, 300, 301, 999], list(range(10, 1000, 10))):
        p, v = _feed(Reservoir(50, (3,), np.float32), keys, pos, vals, cuts).result()
        assert p.tolist() == want.tolist() and np.array_equal(v, vals[want])
    back = Reservoir(50, (3,), np.float32)  # read in another order: the same rows
    for i in range(999, -1, -100):
        back.add(keys[max(i - 99, 0):i + 1], pos[max(i - 99, 0):i + 1], vals[max(i - 99, 0):i + 1])
    assert back.result()[0].tolist() == want.tolist() and back.truncated
    small = _feed(Reservoir(2000), keys, pos, vals[:, 0].astype(np.float64), [500])
    assert not small.truncated and small.result()[0].tolist() == list(range(1000))


def test_score_stats_exact_moments_and_the_whole_series_below_the_sample_size():
    rng = np.random.default_rng(1)
    v = rng.normal(50, 10, 5000)
    v[[3, 70]] = np.nan
    ids = [f"x{i}" for i in range(5000)]
    keys, pos = sample_keys(ids), np.arange(5000)
    whole = _feed(ScoreStats(10_000), keys, pos, v, [1000, 1001, 4000])
    assert whole.summary(seed=0) == M.summary(v, seed=0)  # same values, same order: same numbers
    part = _feed(ScoreStats(500), keys, pos, v, [1000, 1001, 4000])
    s, f = part.summary(seed=0), v[~np.isnan(v)]
    assert s["n"] == 4998 and s["missing"] == 2 and s["quantiles_sample"] <= 500
    assert s["mean"] == pytest.approx(f.mean(), rel=1e-12) and s["std"] == pytest.approx(f.std(ddof=1), rel=1e-10)
    assert (s["min"], s["max"]) == (f.min(), f.max())
    assert s["median"] == pytest.approx(np.median(f), abs=1.5) and s["mean_ci_lo"] < f.mean() < s["mean_ci_hi"]
    bad = ScoreStats(3)
    bad.add(sample_keys(["a", "b", "c", "d"]), np.arange(4), np.array([1.0, np.inf, 2.0, 3.0]))
    with pytest.raises(M.NonFiniteError, match="1 of 4 rows: 1"):
        bad.summary()


def test_dup_counter_spills_and_counts_exactly():
    rng = np.random.default_rng(2)
    values = [f"{v:x}" for v in rng.integers(0, 3000, 20_000)]
    want = len(values) - len(set(values))
    for spill in (1 << 22, 1000):
        c = DupCounter(spill)
        for i in range(0, len(values), 1500):
            c.add(string_codes(values[i:i + 1500] + [""]))  # empty hashes are left out
        assert c.repeats() == want


def test_smallest_and_capped_ids():
    s = Smallest(3)
    for k in [5, 1, 9, 3, 2, 8]:
        if s.accepts(k):
            s.offer(k, f"i{k}")
    assert s.items() == ["i1", "i2", "i3"] and not s.accepts(4)
    ids = IdList(2)
    ids.extend_capped(["a", "b", "c"])
    ids.extend_capped(["d"])
    assert ids == ["a", "b"] and ids.total == 4


def test_extra_decision_columns_flattened_one_level():
    """Map keys and struct fields become ``column.key``; only present values come back, typed by Arrow."""
    f32 = pa.map_(pa.string(), pa.float32())
    batch = pa.record_batch({
        "sample_id": ["a", "b", "c", "d"], "kept": [True, True, False, True],
        "ref_top1_cos": pa.array([[("x", 0.5), ("y", 0.25)], None, [], [("x", 0.75), ("x", 1.0)]], f32),
        "attr_labels": pa.array([[("colour", "red")], [("colour", None)], None, [("colour", "blue")]],
                                pa.map_(pa.string(), pa.string())),
        "pixel_sha256": ["h"] * 4, "sem_cluster": pa.array([1, None, 3, 4], pa.int32()),
        "unsafe": [True, None, False, True], "emb": pa.array([[1.0]] * 4, pa.list_(pa.float32())),
    })
    for sl in (batch, batch.slice(1, 3)):
        got = extra_columns(sl)
        assert set(got) == {"ref_top1_cos.x", "ref_top1_cos.y", "attr_labels.colour", "sem_cluster", "unsafe"} - (
            {"ref_top1_cos.y"} if sl is not batch else set())
    got = extra_columns(batch)
    x = got["ref_top1_cos.x"]
    assert x.kind == "score" and x.rows.tolist() == [0, 3] and x.values.tolist() == [0.5, 1.0]  # last value wins
    lab = got["attr_labels.colour"]
    assert lab.kind == "label" and lab.rows.tolist() == [0, 3] and lab.values == ["red", "blue"]
    assert got["unsafe"].kind == "flag" and got["unsafe"].rows.tolist() == [0, 2, 3]
    assert got["sem_cluster"].values.tolist() == [1.0, 3.0, 4.0]
