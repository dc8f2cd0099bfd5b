"""Scale: the driver stays small while the sample count grows, and workers add throughput.

Figures (benchmarks/results/scale.json), all with jobs/scale.yaml (procedural backend, toy CLIP):
- driver peak RSS (the driver process alone: getrusage of itself) and end-to-end images/s of
  ``synthgen run`` at each size in SIZES (env SCALE_SIZES, e.g. "2000,20000"), and the ratios
  200k/10k (goal <= 1.2) and 20k/2k (issue 10 "Done": <= 1.25);
- ``synthgen validate`` of a 100,000-row x 100-image manifest (10M samples): seconds and peak RSS
  (goal < 60 s, < 1 GB);
- generate+embed+stage throughput on a Ray cluster of one vs two worker nodes (ray.cluster_utils,
  output on moto's S3), each run REPEATS times so the spread shows the noise of a shared machine.
Each figure is measured in a fresh process; nothing is reused between sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "scale.json"
SIZES = [int(x) for x in os.environ.get("SCALE_SIZES", "2000,10000,20000,100000,200000").split(",") if x]
NODE_SAMPLES = int(os.environ.get("SCALE_NODE_SAMPLES", "4000"))
REPEATS = int(os.environ.get("SCALE_REPEATS", "2"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
       "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
       "AWS_DEFAULT_REGION": "us-east-1"}
ENV.pop("RAY_ADDRESS", None)

RUN = """
import json, resource, sys, time, yaml
from pipelines.config import JobSpec, load_job
from pipelines.execution.runner import run
spec = load_job(sys.argv[1]).model_dump()
spec.update(json.loads(sys.argv[2]))
t = time.perf_counter()
res = run(JobSpec.model_validate(spec), overwrite=True, quiet=True)
wall = time.perf_counter() - t
print(json.dumps({"samples": res.counts["planned"], "kept": res.counts["kept"], "wall_s": round(wall, 1),
                  "images_per_s_end_to_end": round(res.counts["planned"] / wall, 1),
                  "images_per_s_generate_embed_stage": round(res.images_per_s, 1),
                  "stage_seconds": {k: round(v, 2) for k, v in res.stage_seconds.items()},
                  "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""

VALIDATE = """
import json, resource, sys, time
from pipelines.cli import app
t = time.perf_counter()
app(["validate", sys.argv[1]], standalone_mode=False)
print(json.dumps({"seconds": round(time.perf_counter() - t, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def _child(code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env or ENV, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({r.returncode}): {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_size(n: int, out: str) -> dict[str, Any]:
    """One fresh driver process running jobs/scale.yaml at ``n`` samples (20 prompts x n/20)."""
    over = {"manifest": {"template": {**yaml.safe_load((ROOT / "jobs/scale.yaml").read_text())["manifest"]["template"],
                                      "num_images": n // 20}},
            "output": {"url": out, "shard_max_samples": 10000}}
    return _child(RUN, str(ROOT / "jobs" / "scale.yaml"), json.dumps(over))


def validate_10m(tmp: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 100_000
    colours, shapes = ["red", "green", "blue", "yellow", "purple"], ["circle", "square", "triangle"]
    pq.write_table(pa.table({"prompt_id": [f"p{i:07d}" for i in range(rows)],
                             "prompt": [f"a {colours[i % 5]} {shapes[i % 3]}" for i in range(rows)],
                             "seed": list(range(rows)), "num_images": [100] * rows}), tmp / "m10m.parquet")
    spec = yaml.safe_load((ROOT / "jobs" / "scale.yaml").read_text())
    spec["manifest"] = {"path": str(tmp / "m10m.parquet")}
    for k in ("pretrained", "model_config_file", "tokenizer"):
        spec["clip"][k] = str((ROOT / "jobs" / spec["clip"][k]).resolve())
    job = tmp / "validate10m.yaml"
    job.write_text(yaml.safe_dump(spec))
    return {"samples": rows * 100, "rows": rows, **_child(VALIDATE, str(job))}


def nodes(k: int, s3: str, bucket: str) -> dict[str, Any]:
    """Throughput of the CPU-bound stages on a cluster of ``k`` worker nodes (2 logical CPUs each;
    the head hosts only the driver), pools sized one generator and one embedder per node."""
    from ray.cluster_utils import Cluster

    from tests.s3env import free_port

    os.environ["RAY_AUTH_MODE"] = "disabled"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "dashboard_agent_listen_port": free_port()})
    try:
        for _ in range(k):
            c.add_node(num_cpus=2, dashboard_agent_listen_port=free_port())
        c.wait_for_nodes()
        over = {"manifest": {"template": {**yaml.safe_load((ROOT / "jobs/scale.yaml").read_text())["manifest"][
                    "template"], "num_images": NODE_SAMPLES // 20}},
                "resources": {"generate": {"size": k, "num_cpus": 1.0}, "embed": {"size": k, "num_cpus": 0.5},
                              "actor_start_timeout_s": 300},
                "output": {"url": f"s3://{bucket}/ds", "shard_max_samples": 10000,
                           "storage_options": {"endpoint_url": s3, "skip_instance_cache": True}}}
        return _child(RUN, str(ROOT / "jobs" / "scale.yaml"), json.dumps(over), env={**ENV, "RAY_ADDRESS": c.address})
    finally:
        c.shutdown()


def main() -> None:
    results: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {}
    results["machine"] = f"{os.cpu_count()} CPUs, shared with other work (see the noise figures)"
    parts = os.environ.get("SCALE_PARTS", "sizes,validate,nodes").split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if "sizes" in parts:
            runs = results.setdefault("driver_by_size", {})
            for n in SIZES:
                t = time.time()
                runs[str(n)] = run_size(n, str(Path(tmp) / f"ds{n}"))
                print(f"  {n} samples: {runs[str(n)]} ({time.time() - t:.0f} s)", flush=True)
                OUT.write_text(json.dumps(results, indent=1))
            rss = {int(k): v["driver_peak_rss_mb"] for k, v in runs.items()}
            for a, b in ((10000, 200000), (2000, 20000), (10000, 100000)):
                if a in rss and b in rss:
                    results[f"driver_rss_ratio_{b // 1000}k_over_{a // 1000}k"] = round(rss[b] / rss[a], 3)
        if "validate" in parts:
            results["validate_10M"] = validate_10m(Path(tmp))
            print(f"  validate 10M: {results['validate_10M']}", flush=True)
        if "nodes" in parts:
            from tests.s3env import make_bucket, start_moto

            proc, s3 = start_moto()
            try:
                reps: dict[str, list[float]] = {"1": [], "2": []}
                for r in range(REPEATS):
                    for k in (1, 2):
                        make_bucket(s3, f"n{k}r{r}")
                        res = nodes(k, s3, f"n{k}r{r}")
                        reps[str(k)].append(res["images_per_s_generate_embed_stage"])
                        print(f"  {k} worker node(s), repeat {r}: {res}", flush=True)
                mean = {k: sum(v) / len(v) for k, v in reps.items()}
                results["worker_nodes"] = {"samples": NODE_SAMPLES, "images_per_s": reps,
                                           "speedup_2_over_1": round(mean["2"] / mean["1"], 2),
                                           "spread_pct": {k: round(100 * (max(v) - min(v)) / mean[k], 1)
                                                          for k, v in reps.items()}}
            finally:
                proc.terminate()
    OUT.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
