"""Within-run dedup and rebalancing over partitions, as map / reduce steps (pure; no ray).

Each ``*_map`` splits a block's candidates into ``P`` buckets, each ``*_reduce`` decides one bucket
and returns ``[summary part, result for block 0, ..., result for block B-1]`` so results flow back
to the blocks without passing through one process. Equal to ``single._within_run`` because:

- exact: equal hashes share a bucket (hash partitioning), and ``resolve`` decides each duplicate set
  on its own; pairs come out in global order within a bucket, as they do globally;
- perceptual: the pHash codes (8 bytes a sample) go to one reducer, which runs the same
  ``hamming_pairs`` (same method choice) and ``resolve`` as a single process;
- semantic: k-means is fitted on the same deterministic subsample, every block assigns its own rows,
  each cluster (members and guests, in candidate order) goes whole to one bucket, and the pairs are
  resolved in cluster order, carrying the priority keys of the samples they join;
- rebalancing: a prompt group goes whole to one bucket.

``resolve`` and ``rebalance`` only compare priorities, so ranks among the samples at hand
(``partition.local_rank``) give the decisions global ranks give.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.curation import bias
from pipelines.curation.dedup import hashes as dedup
from pipelines.curation.dedup import semantic as semdedup
from pipelines.curation.dedup.hashes import Pairs, unique_pairs
from pipelines.curation.curate import nullable
from pipelines.curation.partition import Block, apply_drops, keys, local_rank
from pipelines.curation.shuffle import Part, concat, group_buckets, per_block, split

def _rows(block: Block, rows: np.ndarray) -> Part:
    k = keys(block, rows)
    return {**k, "sid": [block.st.ids[i] for i in rows]}


# ---------------------------------------------------------------------------------------- exact
def exact_map(block: Block, p: int) -> list[Part]:
    rows = np.array([i for i, h in enumerate(block.sha) if h is not None], np.int64)
    part = {**_rows(block, rows), "sha": [block.sha[i] for i in rows]}
    return split(part, np.array([int(h[:15], 16) % p for h in part["sha"]], np.int64), p)


def exact_reduce(policy: str, bounds: np.ndarray, *parts: Part) -> list[Any]:
    r = concat(parts)
    order = np.argsort(r["gidx"], kind="stable")
    r = {k: (v[order] if isinstance(v, np.ndarray) else [v[i] for i in order]) for k, v in r.items()}
    pairs = dedup.exact_pairs(r["sha"])
    drop, of, _ = dedup.resolve(len(order), pairs, local_rank(r, policy))
    d = np.flatnonzero(drop)
    return [{"pairs": len(pairs), "removed": int(drop.sum())},
            *per_block(bounds, r["gidx"][d], of=[r["sid"][o] for o in of[d]])]


# ----------------------------------------------------------------------------------- perceptual
def perceptual_map(block: Block) -> Part:
    rows = np.flatnonzero(block.dd_alive & np.array([h is not None for h in block.ph], bool))
    return {**_rows(block, rows), "code": dedup.phash_codes([block.ph[i] for i in rows])}


def perceptual_reduce(r: int, policy: str, bounds: np.ndarray, *parts: Part) -> list[Any]:
    c = concat(parts)
    pairs, method = dedup.hamming_pairs(c["code"], r)
    nn, nd = dedup.nearest_from_pairs(len(c["gidx"]), pairs, closer="low")
    drop, of, _ = dedup.resolve(len(c["gidx"]), pairs, local_rank(c, policy), closer="low")
    d, h = np.flatnonzero(drop), np.flatnonzero(nn >= 0)
    drops = per_block(bounds, c["gidx"][d], of=[c["sid"][o] for o in of[d]])
    near = per_block(bounds, c["gidx"][h], sid=[c["sid"][o] for o in nn[h]], dist=nd[h])
    return [{"max_distance": r, "method": method, "pairs": len(pairs), "removed": int(drop.sum())},
            *({"drops": a, "nn": b} for a, b in zip(drops, near))]


# ------------------------------------------------------------------------------------- semantic
def sem_rows(block: Block) -> np.ndarray:
    return np.flatnonzero(block.dd_alive)


def sem_train(block: Block, emb: np.ndarray, train: np.ndarray) -> np.ndarray:
    """This block's rows of the k-means training sample (``train``: candidate indices, sorted)."""
    local = train[(train >= block.c_off) & (train < block.c_off + len(block.sem_rows))] - block.c_off
    return emb[local]


def sem_fit(k: int, seed: int, *train: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    return semdedup.kmeans_fit(np.concatenate(train), k, seed)


def sem_assign(block: Block, emb: np.ndarray, model: tuple | None, spill: float, p: int) -> tuple[int, list[Part]]:
    """Cluster labels of the block's candidates (kept in the block); (guests, bucket parts of its rows)."""
    n = len(block.sem_rows)
    if model is not None:
        lab, sim = semdedup.kmeans_top2(emb, *model)
        labels, guest = lab[:, 0], (sim[:, 0] - sim[:, 1]) <= spill
    else:
        labels, guest, lab = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros((n, 2), np.int64)
    base = {**_rows(block, block.sem_rows), "c": block.c_off + np.arange(n, dtype=np.int64), "emb": emb}
    g = np.flatnonzero(guest)
    rows = {k: (np.concatenate([v, v[g]]) if isinstance(v, np.ndarray) else v + [v[i] for i in g])
            for k, v in base.items()}
    rows["label"] = np.r_[labels, lab[g, 1]]
    rows["guest"] = np.r_[np.zeros(n, bool), np.ones(len(g), bool)]
    block.sem_labels = labels
    return len(g), split(rows, rows["label"] % p, p)


def sem_reduce(threshold: float, c_bounds: np.ndarray, *parts: Part) -> list[Any]:
    """Pairs of every cluster of this bucket (with the keys of their members), and nearest neighbours
    routed to the blocks by candidate index."""
    r = concat(parts)
    out_pairs: list[Part] = []
    nn_c, nn_sid, nn_cos = [], [], []
    for lab in np.unique(r["label"]).tolist():
        sel = r["label"] == lab
        m = np.flatnonzero(sel & ~r["guest"])
        g = np.flatnonzero(sel & r["guest"])
        m, g = m[np.argsort(r["c"][m], kind="stable")], g[np.argsort(r["c"][g], kind="stable")]
        pairs, nn, cos = semdedup.cluster_pairs(r["emb"][m], r["c"][m], threshold, r["emb"][g], r["c"][g])
        at = {int(c): i for i, c in zip(np.r_[m, g].tolist(), r["c"][np.r_[m, g]].tolist())}
        ends = [at[int(c)] for c in np.r_[pairs.i, pairs.j].tolist()]
        out_pairs.append({"label": lab, "i": pairs.i, "j": pairs.j, "score": pairs.score,
                          "keys": {int(c): (bool(r["rej"][i]), float(r["clip"][i]), r["sid"][i])
                                   for c, i in zip(np.r_[pairs.i, pairs.j].tolist(), ends)}})
        nn_c.append(r["c"][m])
        nn_sid += [r["sid"][at[int(x)]] if x >= 0 else None for x in nn.tolist()]
        nn_cos.append(cos)
    c = np.concatenate(nn_c) if nn_c else np.zeros(0, np.int64)
    near = per_block(c_bounds, c, sid=nn_sid, cos=np.concatenate(nn_cos) if nn_cos else np.zeros(0, np.float32))
    return [{"clusters": len(out_pairs)}, {"pairs": out_pairs}, *near]


def sem_resolve(policy: str, any_guests: bool, c_bounds: np.ndarray, *parts: dict[str, Any]) -> list[Any]:
    clusters = sorted((p for part in parts for p in part["pairs"]), key=lambda p: p["label"])
    key_of = {c: k for p in clusters for c, k in p["keys"].items()}
    if clusters:
        cat = [np.concatenate([p[f] for p in clusters]) for f in ("i", "j", "score")]
        pairs = unique_pairs(*cat) if any_guests else Pairs(*cat)
    else:
        pairs = Pairs.empty()
    nodes = np.unique(np.r_[pairs.i, pairs.j])
    k = {"rej": np.array([key_of[c][0] for c in nodes.tolist()], bool),
         "clip": np.array([key_of[c][1] for c in nodes.tolist()], np.float64), "gidx": nodes}
    local = Pairs(np.searchsorted(nodes, pairs.i), np.searchsorted(nodes, pairs.j), pairs.score)
    drop, of, _ = dedup.resolve(len(nodes), local, local_rank(k, policy))
    d = np.flatnonzero(drop)
    return [{"pairs": len(pairs), "removed": int(drop.sum())},
            *per_block(c_bounds, nodes[d], of=[key_of[int(nodes[o])][2] for o in of[d]])]


# ---------------------------------------------------------------------------------- rebalancing
def rebalance_map(block: Block, attribute: str, p: int) -> list[Part]:
    labels, _, groups = block.perceived or ({attribute: np.zeros(0, np.int64)}, None, [])
    rows = np.flatnonzero(block.st.alive("semantic_dedup"))
    part = {**keys(block, rows), "label": labels[attribute][rows], "group": [groups[i] for i in rows]}
    return split(part, group_buckets(part["group"], p), p)


def rebalance_reduce(prefer: str, k: int, target: np.ndarray, bounds: np.ndarray, *parts: Part) -> list[Any]:
    r = concat(parts)
    n = len(r["gidx"])
    sel, records = bias.rebalance(r["label"], k, r["group"], np.ones(n, bool), target,
                                  local_rank(r, prefer, with_rejected=False))
    return [records, *per_block(bounds, r["gidx"][~sel])]


# ------------------------------------------------------------------------- results back to blocks
def apply_exact(block: Block, *results: Part) -> Block:
    apply_drops(block, concat(results), "exact_duplicate", "exact_dedup", "exact_dup_of")
    return block


def apply_perceptual(block: Block, result: Part) -> Block:
    apply_drops(block, result["drops"], "perceptual_duplicate", "perceptual_dedup")
    nn: list[str | None] = [None] * block.st.n
    nd: list[float | None] = [None] * block.st.n
    for g, sid, dist in zip(result["nn"]["gidx"].tolist(), result["nn"]["sid"], result["nn"]["dist"].tolist()):
        nn[g - block.offset], nd[g - block.offset] = sid, dist
    block.st.col("phash_nn", nn)
    block.st.col("phash_nn_distance", nd)
    return block


def apply_semantic(block: Block, drops: Part, *near: Part) -> Block:
    """Cluster, nearest neighbour and drops of the block's candidates (indexed by candidate)."""
    n = block.st.n
    cluster = np.full(n, -1, np.int64)
    cluster[block.sem_rows] = block.sem_labels
    nn: list[str | None] = [None] * n
    cos = np.full(n, np.nan, np.float32)
    for part in near:
        rows = block.sem_rows[part["gidx"] - block.c_off]
        for k, sid in zip(rows.tolist(), part["sid"]):
            nn[k] = sid
        cos[rows] = part["cos"]
    block.st.col("sem_cluster", nullable(cluster))
    block.st.col("sem_nn", nn)
    block.st.col("sem_nn_cos", nullable(cos, np.nan))
    apply_drops(block, {"gidx": block.offset + block.sem_rows[drops["gidx"] - block.c_off], "of": drops["of"]},
                "semantic_duplicate", "semantic_dedup")
    return block
