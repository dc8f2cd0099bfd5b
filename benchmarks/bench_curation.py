"""Curation on the cluster vs in the driver, on the same staged units: time and the driver's peak RSS.

The staged units are synthetic (``stage_synthetic``: real Parquet units in the staging layout, tiny real
PNGs, clustered unit-norm embeddings with planted exact / perceptual / semantic duplicates, a few
failed samples), so 200k samples stage in seconds instead of hours of generation on 2 cores. Each
mode runs in its own process so peak RSS (``ru_maxrss``, the driver alone: Ray workers are other
processes) is not inherited: "driver" concatenates the light columns and runs ``single.decide`` (what
the runner did before issue 10), "cluster" runs ``curate_units`` on a local Ray cluster. Writes
``benchmarks/results/curation.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
CURATION = {"dedup": {"exact": True, "perceptual": {"enabled": True, "max_distance": 4},
                      "semantic": {"enabled": True, "eps": 0.01, "cluster_size": 1000}, "keep": "best_clip"},
            "min_clip_score": 1.0}


def _png(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def stage_synthetic(url: str, fingerprint: str, n: int, unit_size: int, dim: int, seed: int = 0,
                    failed_every: int = 997) -> list[str]:
    """Stage ``n`` synthetic samples as units ``u000000``...; returns the unit ids in plan order."""
    from pipelines.contracts.unit import EMBED_FIELDS, GEN_SCHEMA, Staging, with_meta
    from pipelines.io.store import Store

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(1, n // 500), dim)).astype(np.float32)
    emb = centers[rng.integers(len(centers), size=n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    sha = [hashlib.sha256(f"{seed}/{k}".encode()).hexdigest() for k in range(n)]
    ph = [f"{int(x):016x}" for x in rng.integers(0, 2**63, size=n, dtype=np.int64)]
    for k in rng.choice(np.arange(1, n), size=n // 20, replace=False):  # planted duplicates of earlier samples
        src = int(rng.integers(k))
        kind = int(rng.integers(3))
        emb[k] = emb[src] + (0.001 if kind < 2 else 0.02) * rng.normal(size=dim)
        if kind == 0:
            sha[k], ph[k] = sha[src], ph[src]
        elif kind == 1:
            ph[k] = f"{int(ph[src], 16) ^ (1 << int(rng.integers(60))):016x}"
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    txt = emb + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    clip = (100 * np.maximum((emb * txt).sum(1), 0)).astype(np.float32)
    colours, shapes = ["red", "blue", "green"], ["circle", "square"]
    schema = pa.schema(list(GEN_SCHEMA) + [pa.field(k, t) for k, t in EMBED_FIELDS])
    staging = Staging(Store(url), fingerprint)
    units = []
    for u, start in enumerate(range(0, n, unit_size)):
        ks = range(start, min(n, start + unit_size))
        rows = []
        for k in ks:
            p = k // 6
            bad = failed_every and k % failed_every == failed_every - 1
            rows.append({
                "sample_id": f"p{p:06d}/{k % 6}", "prompt_id": f"p{p:06d}", "index": k % 6,
                "prompt": f"a {colours[p % 3]} {shapes[p // 3 % 2]}", "negative_prompt": None, "seed": k,
                "steps": 4, "guidance_scale": 3.0, "height": 8, "width": 8,
                "attributes": [("colour", colours[p % 3]), ("shape", shapes[p // 3 % 2])],
                "png": None if bad else _png(rng), "pixel_sha256": None if bad else sha[k],
                "phash": None if bad else ph[k], "gen_ms": 1.0, "gen_worker": "w0",
                "error": "RuntimeError: planted" if bad else None, "clip_score": None if bad else float(clip[k]),
                "image_emb": None if bad else emb[k].tolist(), "text_emb": None if bad else txt[k].tolist(),
                "clip_ms": 1.0})
        t = pa.Table.from_pylist(rows, schema=schema)
        t = with_meta(t, "synthgen.generator", {"backend": "synthetic", "model": "none", "weights_sha256": None,
                                               "pipeline_class": None, "scheduler": None, "dtype": "float32",
                                               "device_type": "cpu"})
        t = with_meta(t, "synthgen.clip", {"model": "none", "weights_sha256": None})
        uid = f"u{u:06d}"
        staging.write_unit(uid, t)
        units.append(uid)
    return units


def _spec(url: str, curation: dict[str, Any]) -> Any:
    from pipelines.config import JobSpec

    return JobSpec.model_validate({
        "name": "bench", "manifest": {"template": {"template": "a {c}", "slots": {"c": ["x"]}, "seeds": [0],
                                                   "num_images": 1}},
        "generator": {"model": "none"}, "clip": {"model": "ViT-B-32"}, "unit_size": 256,
        "curation": curation, "output": {"url": url}})


def run_mode(mode: str, url: str, fingerprint: str, units: list[str]) -> dict[str, Any]:
    """One curation of the staged units in this process; peak RSS of this process."""
    from pipelines.contracts.unit import LIGHT_COLUMNS, Staging

    import ray

    # both modes hold a Ray driver, as the runner does after generation: a cluster of its own
    # (address="local"), never a `ray start` cluster another process left running
    ray.init(address="local", num_cpus=int(os.environ.get("BENCH_RAY_CPUS", "4")), include_dashboard=False,
             log_to_driver=False)
    spec = _spec(url, CURATION)
    staging = Staging(spec.output.store(), fingerprint)
    t0 = time.perf_counter()
    if mode == "driver":
        import pyarrow.compute as pc

        from pipelines.curation import single

        light = pa.concat_tables([staging.read_unit(u, LIGHT_COLUMNS) for u in units])
        dec = single.decide(light.filter(pc.is_null(light.column("error"))), spec, [])
        kept = int(pc.sum(dec.column("kept")).as_py())
    else:
        from pipelines.execution.curate_plan import choose_executor, curate_units

        kept = curate_units(spec, units, staging, [], executor=choose_executor(len(units), True)).kept
    return {"mode": mode, "seconds": round(time.perf_counter() - t0, 2), "kept": kept,
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--root", default="/tmp/synthgen-bench-curation")
    ap.add_argument("--mode", default=None)
    args = ap.parse_args()
    fp, url = "bench", f"{args.root}/{args.samples}"
    if args.mode:  # child process: one measurement
        units = json.loads(Path(url, "units.json").read_text())
        print(json.dumps(run_mode(args.mode, url, fp, units)))
        return
    t = time.perf_counter()
    if not Path(url, "units.json").exists():  # staged once per size and root (delete the root to restage)
        units = stage_synthetic(url, fp, args.samples, 256, 512)
        Path(url, "units.json").write_text(json.dumps(units))
    staged_s = time.perf_counter() - t
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    res = {}
    for mode in ("driver", "cluster"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_curation", "--samples", str(args.samples),
                              "--root", args.root, "--mode", mode], capture_output=True, text=True, env=env,
                             cwd=HERE.parent, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["driver"]["kept"] == res["cluster"]["kept"], res
    summary = {
        "samples": args.samples, "staged_in_s": round(staged_s, 1), "curation": CURATION, **res,
        "time_ratio_cluster_over_driver": round(res["cluster"]["seconds"] / res["driver"]["seconds"], 2),
        "driver_rss_ratio_cluster_over_driver": round(res["cluster"]["driver_peak_rss_mb"]
                                                      / res["driver"]["driver_peak_rss_mb"], 2),
        "machine": f"{os.cpu_count()} cores, shared with other jobs (load average "
                   f"{os.getloadavg()[0]:.1f} at the end): times are noisy",
    }
    (HERE / "results").mkdir(exist_ok=True)
    path = HERE / "results" / "curation.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    if old.get("samples") == args.samples:  # earlier runs of this size: the spread is the noise
        summary["earlier_runs"] = old.pop("earlier_runs", []) + [{k: old[k] for k in (
            "driver", "cluster", "time_ratio_cluster_over_driver", "driver_rss_ratio_cluster_over_driver", "machine")
            if k in old}]
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
