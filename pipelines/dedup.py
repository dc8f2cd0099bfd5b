"""Duplicate detection on hashes and embeddings already computed at generation time (no images).

- exact: equal ``pixel_sha256`` (hash of decoded pixels, so re-encoding a PNG does not hide a copy);
- perceptual: 64-bit pHash within Hamming distance ``r``, found with an index, never all pairs in
  Python: faiss ``IndexBinaryFlat.range_search`` for small sets, multi-index hashing (pigeonhole on
  ``r + 1`` bit-chunks, exact) for large ones, whichever is estimated cheaper;
- semantic: cosine of CLIP image embeddings >= ``1 - eps``, SemDeDup-style: faiss k-means partition,
  then all pairs inside each cluster (``cluster_pairs``, a pure function), fanned out as Ray tasks.

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

    def take(self, ids: np.ndarray) -> "Pairs":
        """Map local indices to ``ids[local]``."""
        a, b = ids[self.i], ids[self.j]
        return Pairs(np.minimum(a, b), np.maximum(a, b), self.score)


def _unique_pairs(i: np.ndarray, j: np.ndarray, s: np.ndarray) -> Pairs:
    a, b = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    key = np.stack([a, b], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    return Pairs(a[first], b[first], s[first])


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
    return _unique_pairs(*(np.concatenate(v) for v in out))


def hamming_pairs(codes: np.ndarray, r: int, method: str = "auto") -> tuple[Pairs, str]:
    """All pairs of codes within Hamming distance ``r`` (exact), by the cheapest index; (pairs, method)."""
    if method == "auto":
        cost = hamming_cost(codes, r) if len(codes) > 20000 else {"flat": 0.0}
        method = min(cost, key=cost.__getitem__)
    if method == "flat":
        return hamming_pairs_flat(codes, r), method
    return hamming_pairs_multi_index(codes, r, method), method


# ------------------------------------------------------------------------------------- semantic
def cluster_pairs(emb: np.ndarray, ids: np.ndarray, threshold: float, guest_emb: np.ndarray | None = None,
                  guest_ids: np.ndarray | None = None, block: int = 2048) -> tuple[Pairs, np.ndarray, np.ndarray]:
    """All pairs with cosine >= ``threshold`` in one cluster (pure; normalised embeddings).

    ``emb``/``ids``: the cluster's members; ``guest_*``: border points of neighbouring clusters,
    compared with the members only. Returns (pairs in global ids, nearest other point per member
    (-1 if none), its cosine). Row blocks bound memory for large clusters."""
    g = len(ids)
    nn = np.full(g, -1, np.int64)
    nn_cos = np.full(g, np.nan, np.float32)
    e = np.ascontiguousarray(emb, dtype=np.float32)
    ge = np.zeros((0, e.shape[1]), np.float32) if guest_emb is None else np.ascontiguousarray(guest_emb, np.float32)
    gids = np.zeros(0, np.int64) if guest_ids is None else np.asarray(guest_ids, np.int64)
    allv = np.vstack([e, ge])
    all_ids = np.r_[np.asarray(ids, np.int64), gids]
    if g == 0 or len(all_ids) < 2:
        return Pairs.empty(), nn, nn_cos
    ii, jj, ss = [], [], []
    for s in range(0, g, block):
        sim = e[s : s + block] @ allv.T
        rows = np.arange(s, min(s + block, g))
        sim[rows - s, rows] = -np.inf
        best = sim.argmax(axis=1)
        nn[rows] = all_ids[best]
        nn_cos[rows] = sim[rows - s, best]
        r, c = np.nonzero(sim >= threshold)
        take = (c > r + s) | (c >= g)  # member pairs once; member x guest always
        ii.append(ids[r[take] + s])
        jj.append(all_ids[c[take]])
        ss.append(sim[r[take], c[take]].astype(np.float32))
    return _ordered(np.concatenate(ii), np.concatenate(jj), np.concatenate(ss)), nn, nn_cos


def _ordered(i: np.ndarray, j: np.ndarray, s: np.ndarray) -> Pairs:
    return Pairs(np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64), s)


def _clusters_task(emb: np.ndarray, work: list[tuple[np.ndarray, np.ndarray]], threshold: float):
    return [cluster_pairs(emb[m], m, threshold, emb[gs], gs) for m, gs in work]


def _kmeans(x: np.ndarray, k: int, seed: int, niter: int) -> np.ndarray:
    """Normalised centroids of faiss spherical k-means (k <= len(x))."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, max_points_per_centroid=64,
                      min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    c = km.centroids.astype(np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def _top2(x: np.ndarray, centroids: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` (>= 2) nearest centroids of every row, padded with -1 / -inf."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    sim, lab = index.search(np.ascontiguousarray(x, np.float32), min(k, len(centroids)))
    pad = k - lab.shape[1]
    if pad:
        lab = np.c_[lab, np.full((len(x), pad), -1)]
        sim = np.c_[sim, np.full((len(x), pad), -np.inf)]
    return lab.astype(np.int64), sim


def kmeans_assign(emb: np.ndarray, k: int, seed: int, niter: int = 10, dim: int = 64
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Two nearest of k spherical k-means centroids per row and their scores, (n, 2) each.

    Wide embeddings are first projected on their top ``dim`` principal axes (fitted on a sample),
    which makes training and assignment ~d/dim times cheaper; the projection is linear and
    contracting, so near-duplicates stay together and the spill margin stays valid. faiss
    k-means trains on a deterministic subsample (64 points per centroid); assignment is exact."""
    n, d = emb.shape
    rng = np.random.default_rng(seed)
    train = emb if n <= 64 * k else emb[np.sort(rng.choice(n, 64 * k, replace=False))]
    if d > dim:
        fit = train[: min(len(train), 20000)].astype(np.float64)
        _, _, vt = np.linalg.svd(fit - fit.mean(0), full_matrices=False)
        proj = np.ascontiguousarray(vt[:dim].T, np.float32)
        return _top2(np.ascontiguousarray(emb @ proj), _kmeans(train @ proj, k, seed, niter))
    return _top2(emb, _kmeans(train, k, seed, niter))


@dataclass
class SemanticResult:
    pairs: Pairs
    cluster: np.ndarray  # cluster id per row
    nn: np.ndarray  # nearest other point of its cluster or its guests (-1: alone)
    nn_cos: np.ndarray
    n_clusters: int
    guests: int  # border points also compared in their second cluster
    used_ray: bool


def semantic_pairs(emb: np.ndarray, eps: float, cluster_size: int = 1000, seed: int = 0, spill: float = 0.05,
                   use_ray: bool | None = None, tasks: int | None = None) -> SemanticResult:
    """SemDeDup: k-means into ~n/cluster_size clusters, then exact pairs within each cluster.

    A point whose second-nearest centroid scores within ``spill`` (cosine) of its nearest one is
    also compared, as a guest, with the members of that second cluster: near-duplicates that fall
    on both sides of a cluster boundary are found too. ``use_ray``: None = fan the clusters out as
    Ray tasks when a Ray cluster is initialised; the per-cluster work is the pure ``cluster_pairs``."""
    n = len(emb)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    k = max(1, int(round(n / max(cluster_size, 2))))
    if n > cluster_size and k > 1:
        lab, sim = kmeans_assign(emb, k, seed)
        labels = lab[:, 0]
        guest = (sim[:, 0] - sim[:, 1]) <= spill
    else:
        labels, guest, lab = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros((n, 2), np.int64)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    members = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    g_ids = np.flatnonzero(guest)
    g_lab = lab[g_ids, 1]
    g_order = np.argsort(g_lab, kind="stable")
    by_cluster = {int(c): g_ids[g_order][g_lab[g_order] == c] for c in np.unique(g_lab)}
    work = [(m, by_cluster.get(int(labels[m[0]]), np.zeros(0, np.int64))) for m in members]
    threshold = 1.0 - eps
    if use_ray is None:
        try:
            import ray

            use_ray = ray.is_initialized() and len(members) > 1
        except ImportError:
            use_ray = False
    results = _fan_out(emb, work, threshold, tasks) if use_ray else _clusters_task(emb, work, threshold)
    nn = np.full(n, -1, np.int64)
    nn_cos = np.full(n, np.nan, np.float32)
    for (ids, _), (_, m_nn, m_cos) in zip(work, results):
        nn[ids], nn_cos[ids] = m_nn, m_cos
    if results:
        cat = [np.concatenate([getattr(r[0], f) for r in results]) for f in ("i", "j", "score")]
        pairs = _unique_pairs(*cat) if len(g_ids) else Pairs(*cat)
    else:
        pairs = Pairs.empty()
    return SemanticResult(pairs, labels, nn, nn_cos, len(members), int(guest.sum()), bool(use_ray))


def _fan_out(emb: np.ndarray, work: list[tuple[np.ndarray, np.ndarray]], threshold: float, tasks: int | None):
    """Clusters packed into balanced Ray tasks (by pairwise work); embeddings shared via the object store."""
    import ray

    n_tasks = tasks or max(1, min(len(work), 4 * int(ray.available_resources().get("CPU", 1) or 1)))
    cost = [len(m) * (len(m) + len(g)) for m, g in work]
    loads = np.zeros(n_tasks)
    bins: list[list[int]] = [[] for _ in range(n_tasks)]
    for c in sorted(range(len(work)), key=lambda c: (-cost[c], c)):  # largest first
        t = int(loads.argmin())
        bins[t].append(c)
        loads[t] += cost[c]
    remote = ray.remote(num_cpus=1)(_clusters_task)
    ref = ray.put(emb)
    futures = [(b, remote.remote(ref, [work[c] for c in b], threshold)) for b in bins if b]
    results: list = [None] * len(work)
    for b, fut in futures:
        for c, res in zip(b, ray.get(fut)):
            results[c] = res
    return results


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
