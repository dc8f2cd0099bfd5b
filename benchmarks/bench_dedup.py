"""Dedup at scale on synthetic data with planted near-duplicates (issue 4's benchmark).

- semantic: n x 512 float32 L2-normalised embeddings (a mixture of n/500 clusters, 1% of rows
  replaced by near-copies of other rows at cosine ~0.975), SemDeDup at eps = 0.05 (cosine >= 0.95);
  recall of the planted pairs over all n rows, and precision and recall of the pairs found versus
  brute force on the first 50k rows (every pair reported is an exact cosine, so precision is 1 by
  construction; recall is what the partition can lose).
- perceptual: n random 64-bit pHashes, 1% replaced by copies of other hashes with 0..r bits
  flipped; all pairs within Hamming distance r, versus brute force on the first 50k.

Figures go to benchmarks/results/dedup.json: seconds, peak RSS, pairs, P/R, and the scaling
exponent between sizes (t ~ n^k). ``python -m benchmarks.bench_dedup [--sizes 100000,1000000]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import time
from pathlib import Path

import numpy as np

from pipelines.curation.dedup import hashes as dedup

from pipelines.curation.dedup import semantic as semdedup

ROOT = Path(__file__).resolve().parents[1]
EPS = 0.05


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def embeddings(n: int, d: int = 512, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """(embeddings, planted pairs whose cosine is >= 1 - EPS)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 500, 10), d), dtype=np.float32)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x[s : s + m] = centres[rng.integers(len(centres), size=m)] + 0.9 * rng.standard_normal((m, d), np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = n // 100
    src, dst = rng.choice(n, k, replace=False), rng.choice(n, k, replace=False)
    keep = src != dst
    y = x[src[keep]] + 0.01 * rng.standard_normal((int(keep.sum()), d), np.float32)
    x[dst[keep]] = y / np.linalg.norm(y, axis=1, keepdims=True)
    a, b = src[keep], dst[keep]
    ok = np.einsum("ij,ij->i", x[a], x[b]) >= 1 - EPS  # a later plant may have overwritten a source
    return x, set(zip(np.minimum(a, b)[ok].tolist(), np.maximum(a, b)[ok].tolist()))


def brute_cosine_pairs(x: np.ndarray, threshold: float, block: int = 4096) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for s in range(0, len(x), block):
        sim = x[s : s + block] @ x.T
        r, c = np.nonzero(sim >= threshold)
        r += s
        keep = c > r
        out.update(zip(r[keep].tolist(), c[keep].tolist()))
    return out


def hashes(n: int, r: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    k = n // 100
    src, dst = rng.choice(n, k, replace=False), rng.choice(n, k, replace=False)
    flips = rng.integers(0, r + 1, size=k)
    for a, b, f in zip(src, dst, flips):
        c = codes[a].copy()
        for bit in rng.choice(64, int(f), replace=False):
            c[bit // 8] ^= np.uint8(1 << (bit % 8))
        codes[b] = c
    return codes


def pr(found: set, truth: set) -> dict[str, float]:
    tp = len(found & truth)
    return {"precision": tp / max(len(found), 1), "recall": tp / max(len(truth), 1), "true_pairs": len(truth)}


def bench_semantic(n: int, check: int, use_ray: bool) -> dict:
    x, planted = embeddings(n)
    gc.collect()
    t = time.perf_counter()
    res = semdedup.semantic_pairs(x, EPS, cluster_size=1000, seed=0, use_ray=use_ray)
    secs = time.perf_counter() - t
    out = {"n": n, "seconds": round(secs, 2), "pairs": len(res.pairs), "clusters": res.n_clusters,
           "guests": res.guests, "ray": res.used_ray, "peak_rss_gb": round(peak_rss_gb(), 2),
           "recall_of_planted_pairs": round(len(planted & set(zip(res.pairs.i.tolist(), res.pairs.j.tolist())))
                                            / max(len(planted), 1), 4), "planted_pairs": len(planted)}
    if check:
        m = min(check, n)
        sub = (res.pairs.i < m) & (res.pairs.j < m)
        found = set(zip(res.pairs.i[sub].tolist(), res.pairs.j[sub].tolist()))
        t = time.perf_counter()
        out[f"vs_brute_force_{m}"] = pr(found, brute_cosine_pairs(x[:m], 1 - EPS))
        out["brute_force_seconds"] = round(time.perf_counter() - t, 1)
    return out


def bench_phash(n: int, r: int, check: int) -> dict:
    codes = hashes(n, r)
    t = time.perf_counter()
    pairs, method = dedup.hamming_pairs(codes, r)
    secs = time.perf_counter() - t
    out = {"n": n, "max_distance": r, "method": method, "seconds": round(secs, 2), "pairs": len(pairs),
           "peak_rss_gb": round(peak_rss_gb(), 2)}
    if check:
        m = min(check, n)
        sub = (pairs.i < m) & (pairs.j < m)
        found = set(zip(pairs.i[sub].tolist(), pairs.j[sub].tolist()))
        truth = dedup.hamming_pairs_flat(codes[:m], r)
        out[f"vs_brute_force_{m}"] = pr(found, set(zip(truth.i.tolist(), truth.j.tolist())))
    return out


def exponent(rows: list[dict]) -> float | None:
    if len(rows) < 2 or rows[0]["seconds"] <= 0:
        return None
    a, b = rows[0], rows[-1]
    return round(math.log(b["seconds"] / a["seconds"]) / math.log(b["n"] / a["n"]), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--check", type=int, default=50_000, help="brute-force subset for precision/recall (0: skip)")
    ap.add_argument("--ray", action="store_true", help="fan the semantic clusters out over a local Ray cluster")
    ap.add_argument("--only", choices=["semantic", "phash"], default=None)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    path = ROOT / "benchmarks" / "results" / "dedup.json"
    out: dict = json.loads(path.read_text()) if path.exists() else {}
    out["machine"] = {"cpus": __import__("os").cpu_count(), "load_average_at_start": __import__("os").getloadavg()}
    if args.only in (None, "phash"):
        for r in (4, 6):
            rows = [bench_phash(n, r, args.check if n == sizes[-1] else 0) for n in sizes]
            out[f"phash_r{r}"] = {"runs": rows, "time_exponent": exponent(rows)}
            print(json.dumps(out[f"phash_r{r}"]), flush=True)
    if args.only in (None, "semantic"):
        rows = []
        for n in sizes:
            rows.append(bench_semantic(n, args.check if n == sizes[-1] else 0, args.ray))
            print(json.dumps(rows[-1]), flush=True)
            gc.collect()
        out["semantic_eps0.05"] = {"runs": rows, "time_exponent": exponent(rows)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
