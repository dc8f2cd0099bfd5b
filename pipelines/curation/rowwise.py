"""Per-sample products whose value does not depend on how the samples are batched.

BLAS kernels round a row of ``A @ B.T`` differently depending on how many rows ``A`` has (edge tiles,
gemv vs gemm), and faiss switches to BLAS above a batch size; so the same sample scored in a block of
31 and in the whole run could differ in the last bit, and a threshold or an argmax could flip.
Curation runs per partition on the cluster and must give one answer, so every per-sample product
goes through these: ``einsum`` sums each output element on its own, and faiss searches query by query.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` (n, k), each element computed independently of the other rows of ``a``."""
    return np.einsum("ij,kj->ik", a, b)


@contextmanager
def faiss_rowwise() -> Iterator[None]:
    """faiss flat searches query by query (never its batched BLAS path) inside the block."""
    import faiss

    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 2**30
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = before
