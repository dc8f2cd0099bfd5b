"""Bounded accumulators the audit report streams every published sample and decisions row through, so
the driver's memory does not grow with the sample count.

Counts, means, variances, minima and maxima are exact. What needs the values themselves (quantiles,
histograms, bootstrap intervals, metrics on embeddings) uses a deterministic sample: the rows whose
sample id has the lowest hash (:func:`sample_keys`), which does not depend on read order, shard layout
or the other rows. While a series has no more rows than its sample holds, the sample *is* the series,
in stream order, and every number equals the one computed from all rows.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.report import metrics as M


def sample_keys(ids: Sequence[str], salt: str = "sample") -> np.ndarray:
    """uint64 rank of each sample id: the first 8 bytes of ``sha256(salt|id)``."""
    return np.fromiter((int.from_bytes(hashlib.sha256(f"{salt}|{s}".encode()).digest()[:8], "big") for s in ids),
                       np.uint64, len(ids))


class IdList(list):
    """The first ids of something (at most a cap), and how many there were in all (``total``)."""

    def __init__(self, cap: int):
        super().__init__()
        self.cap, self.total = cap, 0

    def extend_capped(self, ids: Sequence[str]) -> None:
        self.total += len(ids)
        self.extend(ids[: max(self.cap - len(self), 0)])


class Reservoir:
    """The ``k`` rows with the lowest key seen so far (ties: the earlier position), with a payload row each.

    Memory O(k x payload); rows come back in stream order (:meth:`result`)."""

    def __init__(self, k: int, shape: tuple[int, ...] = (), dtype: Any = np.float64):
        self.k, self.seen = k, 0
        self._keys, self._pos = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
        self._vals = [np.zeros((0, *shape), dtype)]
        self._held, self._cut = 0, None  # rows held; the k-th lowest key once k are held

    @property
    def truncated(self) -> bool:
        return self.seen > self.k

    def add(self, keys: np.ndarray, pos: np.ndarray, vals: np.ndarray) -> None:
        self.seen += len(keys)
        if self._cut is not None:  # only keys at or below the current k-th can enter
            keep = keys <= self._cut
            keys, pos, vals = keys[keep], pos[keep], vals[keep]
        if not len(keys) or not self.k:
            return
        self._keys.append(np.asarray(keys, np.uint64))
        self._pos.append(np.asarray(pos, np.int64))
        self._vals.append(np.asarray(vals, self._vals[0].dtype))
        self._held += len(keys)
        if self._held > self.k + max(self.k // 2, 256):  # held rows stay within 1.5 k (+ one batch)
            self._compact()

    def _compact(self) -> None:
        keys, pos, vals = np.concatenate(self._keys), np.concatenate(self._pos), np.concatenate(self._vals)
        if len(keys) > self.k:
            keep = np.lexsort((pos, keys))[: self.k]
            keys, pos, vals = keys[keep], pos[keep], vals[keep]
        if self.k and len(keys) >= self.k:
            self._cut = keys.max()
        self._keys, self._pos, self._vals, self._held = [keys], [pos], [vals], len(keys)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions, payload rows) of the sample, in stream order."""
        self._compact()
        order = np.argsort(self._pos[0], kind="stable")
        return self._pos[0][order], self._vals[0][order]


class ScoreStats:
    """One numeric series (NaN = missing): exact count, mean, variance, min and max, and a sample of
    ``k`` values for quantiles, histograms and the bootstrap."""

    def __init__(self, k: int):
        self.sample = Reservoir(k)
        self.rows = self.n = self.missing = 0
        self.mean = self.m2 = 0.0
        self.lo, self.hi = np.inf, -np.inf
        self.inf_rows: list[int] = []
        self.inf_count = 0

    def add(self, keys: np.ndarray, pos: np.ndarray, values: np.ndarray) -> None:
        v = np.asarray(values, np.float64)
        self.sample.add(keys, pos, v)
        self.rows += len(v)
        nan, inf = np.isnan(v), np.isinf(v)
        self.missing += int(nan.sum())
        if inf.any():
            self.inf_count += int(inf.sum())
            self.inf_rows += np.asarray(pos)[inf][: 10 - len(self.inf_rows)].tolist()
        fin = v[~nan & ~inf]
        if fin.size:  # Chan et al.: merge the batch's mean and sum of squares into the running ones
            mb = float(fin.mean())
            m2b = float(((fin - mb) ** 2).sum())
            tot = self.n + fin.size
            delta = mb - self.mean
            self.mean += delta * fin.size / tot
            self.m2 += m2b + delta * delta * self.n * fin.size / tot
            self.n = tot
            self.lo, self.hi = min(self.lo, float(fin.min())), max(self.hi, float(fin.max()))

    @property
    def truncated(self) -> bool:
        return self.sample.truncated

    def values(self) -> np.ndarray:
        """The sampled values (all of them, in stream order, unless :attr:`truncated`)."""
        return self.sample.result()[1]

    def summary(self, seed: int = 0) -> dict[str, Any]:
        """:func:`~pipelines.report.metrics.summary` of the series. Beyond the sample size: exact n, mean,
        std, min and max, quartiles from the sample (``quantiles_sample``) and a normal-approximation
        interval of the mean (the bootstrap's limit at this n)."""
        if not self.truncated:
            return M.summary(self.values(), seed=seed)
        if self.inf_count:
            raise M.NonFiniteError("summary input", self.inf_rows, self.rows, self.inf_count)
        v = self.values()
        v = v[np.isfinite(v)]
        std = float(np.sqrt(self.m2 / (self.n - 1))) if self.n > 1 else 0.0
        half = 1.959964 * std / np.sqrt(self.n)
        q = np.quantile(v, [0.25, 0.5, 0.75])
        return {**({"missing": self.missing} if self.missing else {}), "n": self.n, "mean": self.mean,
                "mean_ci_lo": self.mean - half, "mean_ci_hi": self.mean + half, "std": std, "min": self.lo,
                "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2]), "max": self.hi,
                "quantiles_sample": int(v.size), "mean_ci": "normal approximation"}


class Smallest:
    """The ``k`` items with the smallest keys offered (keys unique and comparable), in key order."""

    def __init__(self, k: int):
        self.k, self.seen = k, 0
        self._keys: list[Any] = []
        self._items: list[Any] = []

    def accepts(self, key: Any) -> bool:
        """Whether :meth:`offer` with this key would keep the item (so it need not be built otherwise)."""
        return len(self._keys) < self.k or key < self._keys[-1]

    def offer(self, key: Any, item: Any) -> None:
        self.seen += 1
        if len(self._keys) >= self.k and not key < self._keys[-1]:
            return
        at = bisect.bisect_left(self._keys, key)
        self._keys.insert(at, key)
        self._items.insert(at, item)
        del self._keys[self.k:], self._items[self.k:]

    def items(self) -> list[Any]:
        return list(self._items)


class DupCounter:
    """Exact number of repeats among 64-bit codes (hash prefixes) streamed in: held in memory up to
    ``spill`` codes, beyond that spread over 64 local temporary files by their top bits and counted one
    file at a time, so memory stays O(spill + n / 64)."""

    def __init__(self, spill: int = 1 << 22):
        self.spill, self._held, self._n = spill, [np.zeros(0, np.uint64)], 0
        self._dir: tempfile.TemporaryDirectory | None = None

    def add(self, codes: np.ndarray) -> None:
        self._held.append(np.asarray(codes, np.uint64))
        self._n += len(codes)
        if self._n > self.spill:
            self._flush()

    def _flush(self) -> None:
        codes = np.concatenate(self._held)
        self._held, self._n = [np.zeros(0, np.uint64)], 0
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="synthgen-report-")
        bucket = (codes >> np.uint64(58)).astype(np.int64)
        for b in np.unique(bucket):
            with open(os.path.join(self._dir.name, f"{b:02d}"), "ab") as f:
                codes[bucket == b].tofile(f)

    def repeats(self) -> int:
        """Codes seen beyond the first occurrence of each value."""
        if self._dir is None:
            codes = np.concatenate(self._held)
            return int(len(codes) - len(np.unique(codes)))
        self._flush()
        out = 0
        for name in sorted(os.listdir(self._dir.name)):
            codes = np.fromfile(os.path.join(self._dir.name, name), np.uint64)
            out += int(len(codes) - len(np.unique(codes)))
        self._dir.cleanup()
        self._dir = None
        return out


def string_codes(values: Sequence[str]) -> np.ndarray:
    """A 64-bit code per string (blake2b), for :class:`DupCounter`; empty strings are left out."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "big")
                        for v in values if v), np.uint64)
