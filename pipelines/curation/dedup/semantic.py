"""Semantic deduplication, SemDeDup-style: a faiss k-means partition of the CLIP image embeddings,
then all pairs with cosine >= ``1 - eps`` inside each cluster (``cluster_pairs``, a pure function),
border points also compared in their second cluster, clusters fanned out as Ray tasks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.curation.dedup.hashes import Pairs, unique_pairs
from pipelines.curation.rowwise import faiss_rowwise, rowdot
from pipelines.execution.fanout import balanced_map, cluster_ready


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
    return Pairs.ordered(np.concatenate(ii), np.concatenate(jj), np.concatenate(ss)), nn, nn_cos


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
    with faiss_rowwise():
        sim, lab = index.search(np.ascontiguousarray(x, np.float32), min(k, len(centroids)))
    pad = k - lab.shape[1]
    if pad:
        lab = np.c_[lab, np.full((len(x), pad), -1)]
        sim = np.c_[sim, np.full((len(x), pad), -np.inf)]
    return lab.astype(np.int64), sim


def train_rows(n: int, k: int, seed: int) -> np.ndarray:
    """Rows k-means trains on: all, or a deterministic subsample of 64 points per centroid."""
    if n <= 64 * k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, 64 * k, replace=False))


def kmeans_fit(train: np.ndarray, k: int, seed: int, niter: int = 10, dim: int = 64
               ) -> tuple[np.ndarray | None, np.ndarray]:
    """(projection or None, centroids) from the training rows (see ``kmeans_assign``)."""
    if train.shape[1] > dim:
        fit = train[: min(len(train), 20000)].astype(np.float64)
        _, _, vt = np.linalg.svd(fit - fit.mean(0), full_matrices=False)
        proj = np.ascontiguousarray(vt[:dim].T, np.float32)
        return proj, _kmeans(train @ proj, k, seed, niter)
    return None, _kmeans(train, k, seed, niter)


def kmeans_top2(emb: np.ndarray, proj: np.ndarray | None, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two nearest centroids of rows (any subset of rows: assignment is per row)."""
    return _top2(np.ascontiguousarray(rowdot(emb, proj.T)) if proj is not None else emb, centroids)


def kmeans_assign(emb: np.ndarray, k: int, seed: int, niter: int = 10, dim: int = 64
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Two nearest of k spherical k-means centroids per row and their scores, (n, 2) each.

    Wide embeddings are first projected on their top ``dim`` principal axes (fitted on a sample),
    which makes training and assignment ~d/dim times cheaper; the projection is linear and
    contracting, so near-duplicates stay together and the spill margin stays valid. faiss
    k-means trains on a deterministic subsample (64 points per centroid); assignment is exact."""
    proj, centroids = kmeans_fit(emb[train_rows(len(emb), k, seed)], k, seed, niter, dim)
    return kmeans_top2(emb, proj, centroids)


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
        use_ray = len(members) > 1 and cluster_ready()
    if use_ray:
        costs = [len(m) * (len(m) + len(g)) for m, g in work]
        results = balanced_map(_clusters_task, emb, work, costs, threshold, tasks=tasks)
    else:
        results = _clusters_task(emb, work, threshold)
    nn = np.full(n, -1, np.int64)
    nn_cos = np.full(n, np.nan, np.float32)
    for (ids, _), (_, m_nn, m_cos) in zip(work, results):
        nn[ids], nn_cos[ids] = m_nn, m_cos
    if results:
        cat = [np.concatenate([getattr(r[0], f) for r in results]) for f in ("i", "j", "score")]
        pairs = unique_pairs(*cat) if len(g_ids) else Pairs(*cat)
    else:
        pairs = Pairs.empty()
    return SemanticResult(pairs, labels, nn, nn_cos, len(members), int(guest.sum()), bool(use_ray))
