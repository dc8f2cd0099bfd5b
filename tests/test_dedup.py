"""Dedup methods against brute force: pHash radius search (both indexes), SemDeDup, keep policy."""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
from PIL import Image

from pipelines.curation.dedup import hashes as dedup

from pipelines.curation.dedup import semantic as semdedup


def _planted_codes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    for k in range(0, n // 10):
        src, dst = rng.integers(n, size=2)
        c = codes[src].copy()
        for b in rng.choice(64, int(rng.integers(0, 9)), replace=False):
            c[b // 8] ^= np.uint8(1 << (b % 8))
        codes[dst] = c
    return codes


def _brute_hamming(codes: np.ndarray, r: int) -> set[tuple[int, int]]:
    bits = np.unpackbits(codes, axis=1).astype(np.int32)
    d = bits.sum(1)[:, None] + bits.sum(1)[None, :] - 2 * bits @ bits.T
    i, j = np.nonzero(np.triu(d <= r, 1))
    return set(zip(i.tolist(), j.tolist()))


def _set(p: dedup.Pairs) -> set[tuple[int, int]]:
    return set(zip(p.i.tolist(), p.j.tolist()))


@pytest.mark.parametrize("r", [0, 3, 6])
def test_hamming_indexes_equal_brute_force(r):
    codes = _planted_codes(3000)
    truth = _brute_hamming(codes, r)
    assert truth  # planted pairs exist
    flat = dedup.hamming_pairs_flat(codes, r)
    mih0 = dedup.hamming_pairs_multi_index(codes, r, "mih0")
    mih1 = dedup.hamming_pairs_multi_index(codes, r, "mih1")
    assert _set(flat) == truth and _set(mih0) == truth and _set(mih1) == truth
    assert dedup.hamming_pairs(codes, r)[1] == "flat"  # small sets: exhaustive SIMD search
    bits = np.unpackbits(codes, axis=1).astype(np.int32)
    for p in (flat, mih0, mih1):
        assert all(int(np.abs(bits[a] - bits[b]).sum()) == d for a, b, d in zip(p.i[:50], p.j[:50], p.score[:50]))


def test_phash_codes_follow_imagehash_distance():
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    hexes = [dedup.perceptual_hash(im) for im in imgs]
    codes = dedup.phash_codes(hexes)
    bits = np.unpackbits(codes, axis=1).astype(int)
    for a in range(6):
        for b in range(6):
            expect = imagehash.phash(Image.fromarray(imgs[a])) - imagehash.phash(Image.fromarray(imgs[b]))
            assert int(np.abs(bits[a] - bits[b]).sum()) == expect


def test_exact_pairs_and_resolve_policy():
    pairs = dedup.exact_pairs(["a", "b", "a", None, "a", None])
    assert _set(pairs) == {(0, 2), (0, 4)}  # None (no image) is never a duplicate
    rank = np.array([5, 0, 4, 1, 3, 2])  # sample 4 preferred over 0 and 2
    dropped, of, _ = dedup.resolve(6, dedup.Pairs(np.array([0, 0, 2]), np.array([2, 4, 4]), np.zeros(3)), rank)
    assert dropped.tolist() == [True, False, True, False, False, False] and of[0] == 4 and of[2] == 4


def test_resolve_only_drops_for_a_kept_duplicate():
    # chain a~b, b~c (a and c are not similar): b dropped for a; c survives, since b is not kept
    p = dedup.Pairs(np.array([0, 1]), np.array([1, 2]), np.array([0.99, 0.98]))
    dropped, of, score = dedup.resolve(3, p, np.arange(3))
    assert dropped.tolist() == [False, True, False] and of[1] == 0 and score[1] == pytest.approx(0.99)
    # non-candidates neither get dropped nor cause drops
    dropped, _, _ = dedup.resolve(3, p, np.arange(3), candidates=np.array([False, True, True]))
    assert dropped.tolist() == [False, False, True]


def _clustered(n: int, d: int = 64, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 2), d)).astype(np.float32)
    x = centres[rng.integers(len(centres), size=n)] + 0.8 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src, dst = rng.choice(n, n // 20, replace=False), rng.choice(n, n // 20, replace=False)
    keep = src != dst
    y = x[src[keep]] + 0.02 * rng.standard_normal((keep.sum(), d)).astype(np.float32)
    x[dst[keep]] = y / np.linalg.norm(y, axis=1, keepdims=True)
    s = x @ x.T
    i, j = np.nonzero(np.triu(s >= 0.95, 1))
    return x, set(zip(i.tolist(), j.tolist()))


def test_cluster_pairs_is_exact_within_a_cluster():
    x, truth = _clustered(400)
    ids = np.arange(1000, 1400)
    pairs, nn, nn_cos = semdedup.cluster_pairs(x, ids, 0.95, block=64)  # blocks smaller than the cluster
    assert _set(pairs) == {(a + 1000, b + 1000) for a, b in truth}
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    assert (nn == ids[s.argmax(1)]).all() and np.allclose(nn_cos, s.max(1), atol=1e-6)


def test_semantic_pairs_recall_precision_and_determinism():
    x, truth = _clustered(3000)
    res = semdedup.semantic_pairs(x, eps=0.05, cluster_size=300, seed=0, use_ray=False)
    found = _set(res.pairs)
    assert res.n_clusters > 5
    assert found <= truth  # every pair reported is a true pair (cosine checked exactly)
    assert len(found & truth) / len(truth) >= 0.99
    again = semdedup.semantic_pairs(x, eps=0.05, cluster_size=300, seed=0, use_ray=False)
    assert (again.cluster == res.cluster).all() and _set(again.pairs) == found


def test_semantic_pairs_fan_out_over_ray_equals_local(ray_cluster):
    x, _ = _clustered(2000, seed=3)
    local = semdedup.semantic_pairs(x, eps=0.05, cluster_size=200, use_ray=False)
    fanned = semdedup.semantic_pairs(x, eps=0.05, cluster_size=200, use_ray=True, tasks=3)
    assert fanned.used_ray and not local.used_ray
    assert _set(fanned.pairs) == _set(local.pairs)
    assert (fanned.nn == local.nn).all()
