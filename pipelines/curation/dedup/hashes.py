"""Duplicate detection on hashes and embeddings already computed at generation time (no images).

- exact: equal ``pixel_sha256`` (hash of decoded pixels, so re-encoding a PNG does not hide a copy);
- perceptual: 64-bit pHash within Hamming distance ``r``, found with an index, never all pairs in
  Python: faiss ``IndexBinaryFlat.range_search`` for small sets, multi-index hashing (pigeonhole on
  ``r + 1`` bit-chunks, exact) for large ones, whichever is estimated cheaper;
- semantic: cosine of CLIP image embeddings >= ``1 - eps``, SemDeDup-style (``semdedup.py``).

Every method returns candidate pairs; ``resolve`` turns pairs into keep/drop decisions with a
deterministic priority order (the highest-priority sample of a duplicate set is kept, a sample is
dropped only when it duplicates a sample that is kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHASH_BITS = 64


def perceptual_hash(image: np.ndarray) -> str:
    """64-bit DCT perceptual hash (``imagehash.phash``) of decoded uint8 pixels, as 16 hex digits."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(np.ascontiguousarray(image))))


def phash_codes(hexes: list[str | None]) -> np.ndarray:
    """(n, 8) uint8 codes in faiss' binary layout (big-endian, like the hex string); None -> zeros."""
    return np.frombuffer(b"".join(bytes.fromhex(h) if h else bytes(8) for h in hexes), np.uint8).reshape(-1, 8)


@dataclass
class Pairs:
    """Unordered candidate pairs ``i < j`` with their score (Hamming distance or cosine)."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray

    @staticmethod
    def empty(dtype: type = np.float32) -> "Pairs":
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, dtype))

    def __len__(self) -> int:
        return len(self.i)

    @staticmethod
    def ordered(i: np.ndarray, j: np.ndarray, score: np.ndarray) -> "Pairs":
        """Pairs from unordered index arrays (each pair as ``min, max``)."""
        return Pairs(np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64), score)

    def take(self, ids: np.ndarray) -> "Pairs":
        """Map local indices to ``ids[local]``."""
        return Pairs.ordered(ids[self.i], ids[self.j], self.score)


def unique_pairs(i: np.ndarray, j: np.ndarray, s: np.ndarray) -> Pairs:
    """Ordered pairs with duplicates removed (first occurrence kept)."""
    p = Pairs.ordered(i, j, s)
    _, first = np.unique(np.stack([p.i, p.j], axis=1), axis=0, return_index=True)
    return Pairs(p.i[first], p.j[first], p.score[first])


# ---------------------------------------------------------------------------------------- exact
def exact_pairs(hashes: list[str | None]) -> Pairs:
    """Each member of an equal-hash group paired with the group's first member (score 0)."""
    first: dict[str, int] = {}
    ii, jj = [], []
    for k, h in enumerate(hashes):
        if h is None:
            continue
        if h in first:
            ii.append(first[h])
            jj.append(k)
        else:
            first[h] = k
    return Pairs(np.array(ii, np.int64), np.array(jj, np.int64), np.zeros(len(ii), np.float32))


# ----------------------------------------------------------------------------------- perceptual
def _u64(codes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(codes).view(">u8").ravel().astype(np.uint64)


def _chunk_bounds(m: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, PHASH_BITS, m + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def _chunk_keys(u: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return (u >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)


def _schemes(r: int) -> dict[str, list[tuple[int, int, int | None]]]:
    """Exact candidate schemes as rounds ``(lo, hi, cleared bit)``: codes sharing a round's key are
    compared. ``mih0``: r + 1 chunks, some chunk is equal (pigeonhole). ``mih1``: ceil((r + 1) / 2)
    wider chunks, some chunk differs in at most one bit, found by clearing each bit in turn."""
    m1 = max(1, -(-(r + 1) // 2))
    return {"mih0": [(lo, hi, None) for lo, hi in _chunk_bounds(r + 1)],
            "mih1": [(lo, hi, b) for lo, hi in _chunk_bounds(m1) for b in range(hi - lo)]}


def _round_key(u: np.ndarray, lo: int, hi: int, bit: int | None) -> np.ndarray:
    k = _chunk_keys(u, lo, hi)
    return k if bit is None else k & ~np.uint64(1 << bit)


def _sum_g2(key: np.ndarray) -> float:
    _, counts = np.unique(key, return_counts=True)
    return float((counts.astype(np.float64) ** 2).sum()) / 2


def hamming_cost(codes: np.ndarray, r: int) -> dict[str, float]:
    """Estimated seconds of each exact method on this machine class (used to pick one): sorting
    per round plus candidate pairs; a round of ``mih1`` is measured on one bit per chunk."""
    n = len(codes)
    u = _u64(codes)
    cost = {"flat": n * n / 2 / 1.5e9}
    for name, rounds in _schemes(r).items():
        seen: dict[tuple[int, int], float] = {}
        pairs = 0.0
        for lo, hi, bit in rounds:
            if (lo, hi) not in seen:
                seen[(lo, hi)] = _sum_g2(_round_key(u, lo, hi, bit))
            pairs += seen[(lo, hi)]
        cost[name] = len(rounds) * n * 1.2e-7 + pairs * 5e-8
    return cost


def hamming_pairs_flat(codes: np.ndarray, r: int) -> Pairs:
    """All pairs within distance ``r`` by faiss binary range search (exhaustive, SIMD popcount)."""
    import faiss

    n = len(codes)
    if n < 2:
        return Pairs.empty(np.int32)
    index = faiss.IndexBinaryFlat(PHASH_BITS)
    index.add(np.ascontiguousarray(codes))
    ii, jj, dd = [], [], []
    for start in range(0, n, 65536):
        q = np.ascontiguousarray(codes[start : start + 65536])
        lims, dist, lab = index.range_search(q, r + 1)  # faiss: strictly below the radius
        rows = np.repeat(np.arange(start, start + len(q)), np.diff(lims).astype(np.int64))
        keep = lab > rows
        ii.append(rows[keep])
        jj.append(lab[keep].astype(np.int64))
        dd.append(dist[keep].astype(np.int32))
    return Pairs(np.concatenate(ii), np.concatenate(jj), np.concatenate(dd))


def _equal_key_pairs(u: np.ndarray, key: np.ndarray, r: int, out: list[list[np.ndarray]]) -> None:
    """Pairs within distance ``r`` among codes with equal ``key``: one sort, then each code against
    the next ones of its group, one vectorised pass per offset."""
    n = len(u)
    composite = np.sort((key.astype(np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64))
    order = (composite & np.uint64(0xFFFFFFFF)).astype(np.int64)
    ks = composite >> np.uint64(32)
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    sizes = np.diff(np.r_[starts, n])
    left = np.repeat(sizes, sizes) - (np.arange(n) - np.repeat(starts, sizes)) - 1  # later codes in group
    active = np.flatnonzero(left > 0)
    off = 1
    while len(active):
        a, b = order[active], order[active + off]
        d = np.bitwise_count(u[a] ^ u[b])
        hit = d <= r
        if hit.any():
            out[0].append(a[hit])
            out[1].append(b[hit])
            out[2].append(d[hit].astype(np.int32))
        off += 1
        active = active[left[active] >= off]


def hamming_pairs_multi_index(codes: np.ndarray, r: int, scheme: str = "mih0") -> Pairs:
    """Exact multi-index hashing (see ``_schemes``): only codes that share a round's key are
    compared, and every pair within distance ``r`` shares the key of at least one round."""
    if len(codes) >= 2**32:
        raise ValueError("at most 2^32 codes")
    u = _u64(codes)
    out: list[list[np.ndarray]] = [[], [], []]
    for lo, hi, bit in _schemes(r)[scheme]:
        _equal_key_pairs(u, _round_key(u, lo, hi, bit), r, out)
    if not out[0]:
        return Pairs.empty(np.int32)
    return unique_pairs(*(np.concatenate(v) for v in out))


def hamming_pairs(codes: np.ndarray, r: int, method: str = "auto") -> tuple[Pairs, str]:
    """All pairs of codes within Hamming distance ``r`` (exact), by the cheapest index; (pairs, method)."""
    if method == "auto":
        cost = hamming_cost(codes, r) if len(codes) > 20000 else {"flat": 0.0}
        method = min(cost, key=cost.__getitem__)
    if method == "flat":
        return hamming_pairs_flat(codes, r), method
    return hamming_pairs_multi_index(codes, r, method), method


# -------------------------------------------------------------------------------------- resolve
def resolve(n: int, pairs: Pairs, rank: np.ndarray, candidates: np.ndarray | None = None,
            closer: str = "high") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy, deterministic keep decisions among ``candidates`` (bool mask; default all).

    Samples are visited by ``rank`` (0 = highest priority); a sample is dropped if it has a
    duplicate that is already kept. Returns (dropped mask, kept duplicate it matched (-1), score of
    that match). ``closer``: "high" for similarities, "low" for distances (picks the best match)."""
    cand = np.ones(n, bool) if candidates is None else candidates.astype(bool)
    dropped = np.zeros(n, bool)
    dup_of = np.full(n, -1, np.int64)
    dup_score = np.full(n, np.nan, np.float64)
    if not len(pairs):
        return dropped, dup_of, dup_score
    ok = cand[pairs.i] & cand[pairs.j]
    a, b, s = pairs.i[ok], pairs.j[ok], pairs.score[ok].astype(np.float64)
    # orient: hi = higher-priority member, lo = the one that may be dropped
    swap = rank[a] > rank[b]
    hi, lo = np.where(swap, b, a), np.where(swap, a, b)
    order = np.lexsort((-s if closer == "high" else s, rank[lo]))
    hi, lo, s = hi[order], lo[order], s[order]
    starts = np.flatnonzero(np.r_[True, lo[1:] != lo[:-1]])
    ends = np.r_[starts[1:], len(lo)]
    for st, en in zip(starts.tolist(), ends.tolist()):
        x = lo[st]
        for t in range(st, en):  # best match first
            if not dropped[hi[t]]:
                dropped[x], dup_of[x], dup_score[x] = True, hi[t], s[t]
                break
    return dropped, dup_of, dup_score


def nearest_from_pairs(n: int, pairs: Pairs, closer: str = "high") -> tuple[np.ndarray, np.ndarray]:
    """Best partner of every sample among the pairs (-1 / nan where it has none)."""
    nn = np.full(n, -1, np.int64)
    best = np.full(n, np.nan, np.float64)
    if not len(pairs):
        return nn, best
    x = np.r_[pairs.i, pairs.j]
    y = np.r_[pairs.j, pairs.i]
    s = np.r_[pairs.score, pairs.score].astype(np.float64)
    order = np.lexsort((y, -s if closer == "high" else s, x))
    x, y, s = x[order], y[order], s[order]
    first = np.r_[True, x[1:] != x[:-1]]
    nn[x[first]], best[x[first]] = y[first], s[first]
    return nn, best
