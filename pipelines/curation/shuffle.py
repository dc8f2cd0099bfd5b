"""The shuffle between map and reduce steps of partitioned curation (pure numpy; no ray).

A map step turns a block's rows into a column dict (a *part*) and splits it into ``P`` buckets; a
reduce step concatenates one bucket from every block, decides, and routes its per-sample results
back to their blocks by global index. Dedup, rebalancing and the quota stage all shuffle this way.
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import numpy as np

Part = dict[str, Any]


def split(rows: Part, bucket: np.ndarray, p: int) -> list[Part]:
    """``rows`` cut into ``p`` parts: row i goes to part ``bucket[i]`` (order kept)."""
    out = []
    for b in range(p):
        sel = np.flatnonzero(bucket == b)
        out.append({k: (v[sel] if isinstance(v, np.ndarray) else [v[i] for i in sel]) for k, v in rows.items()})
    return out


def concat(parts: Sequence[Part]) -> Part:
    """One part from many with the same columns (empty parts skipped; keyed by ``gidx``)."""
    nonempty = [p for p in parts if len(p["gidx"])]
    parts = tuple(nonempty) or tuple(parts[:1])
    out: Part = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        out[k] = np.concatenate(vals) if isinstance(vals[0], np.ndarray) else [x for v in vals for x in v]
    return out


def route(bounds: np.ndarray, gidx: np.ndarray) -> np.ndarray:
    """Block of every global index (``bounds``: first index of every block, then the total)."""
    return np.searchsorted(bounds, gidx, side="right") - 1


def per_block(bounds: np.ndarray, gidx: np.ndarray, **cols: Any) -> list[Part]:
    """Per-sample results (``gidx`` plus columns) split back to the blocks they came from."""
    return split({"gidx": gidx, **cols}, route(bounds, gidx), len(bounds) - 1)


def group_buckets(groups: Sequence[str], p: int) -> np.ndarray:
    """Bucket of every row by a stable hash of its group key, so a group meets in one reduce."""
    return np.array([zlib.crc32(g.encode()) % p for g in groups], np.int64)
