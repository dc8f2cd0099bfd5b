"""Balanced fan-out of pure per-item work as Ray tasks (used by semantic dedup's per-cluster pairs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def cluster_ready() -> bool:
    """True when a Ray cluster is initialised in this process (fan-out is then worth it)."""
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def balanced_map(fn: Callable[..., list], shared: Any, items: Sequence, costs: Sequence[float],
                 *args: Any, tasks: int | None = None) -> list:
    """``fn(shared, items_of_one_task, *args) -> one result per item``, spread over Ray tasks.

    Items are packed largest-cost first into the least-loaded task, so tasks finish together;
    ``shared`` travels once through the object store. Results come back in ``items`` order."""
    import ray

    n_tasks = tasks or max(1, min(len(items), 4 * int(ray.available_resources().get("CPU", 1) or 1)))
    loads = np.zeros(n_tasks)
    bins: list[list[int]] = [[] for _ in range(n_tasks)]
    for c in sorted(range(len(items)), key=lambda c: (-costs[c], c)):
        t = int(loads.argmin())
        bins[t].append(c)
        loads[t] += costs[c]
    remote = ray.remote(num_cpus=1)(fn)
    ref = ray.put(shared)
    futures = [(b, remote.remote(ref, [items[c] for c in b], *args)) for b in bins if b]
    results: list = [None] * len(items)
    for b, fut in futures:
        for c, res in zip(b, ray.get(fut)):
            results[c] = res
    return results
