"""Pipeline throughput and memory against a bare diffusers loop, measured in the same run.

Figures (written to benchmarks/results/pipeline.json):
- generation inside the pipeline vs a bare loop with the same threads per process
  (per generator actor: samples / actor busy seconds), and the whole generator pool (samples /
  streaming wall) vs as many bare loops run side by side;
- end to end (generate + embed + stage + curate + publish wall) vs the bare loop using the whole
  machine (one process, all threads) — what a hand-written script would get;
- peak RSS of the whole process tree (driver + Ray) for N and 10N samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]


def bare_loop(model: str, n: int, batch: int, steps: int, size: int, threads: int, guidance: float,
              copies: int = 1) -> float:
    """images/s of a plain diffusers loop: one pipeline, per-sample generators, no Ray, no I/O.

    With ``copies`` > 1, that many loops run at once in separate processes (what a pool of
    actors would be without Ray) and the sum of their rates is returned.
    """
    code = f"""
import time, torch, diffusers
torch.set_num_threads({threads})
pipe = diffusers.DiffusionPipeline.from_pretrained({model!r}, use_safetensors=True)
pipe.set_progress_bar_config(disable=True)
prompts = ["a red circle"] * {batch}
def go(k):
    for i in range(0, k, {batch}):
        pipe(prompt=prompts, num_inference_steps={steps}, guidance_scale={guidance}, height={size}, width={size},
             generator=[torch.Generator("cpu").manual_seed(i + j) for j in range({batch})], output_type="np")
go({batch} * 2)  # warm-up
t = time.perf_counter(); go({n}); print({n} / (time.perf_counter() - t))
"""
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(copies)]
    rates = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"bare loop failed ({proc.returncode})")
        rates.append(float(stdout.strip().splitlines()[-1]))
    return sum(rates)


def _tree_rss(pid: int) -> int:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def pipeline_run(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run ``synthgen run`` in a subprocess (its own local Ray), sampling the process tree's RSS."""
    spec = workdir / f"{job['name']}.yaml"
    spec.write_text(yaml.safe_dump(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(spec), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.5):
            peak = max(peak, _tree_rss(proc.pid))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, _ = proc.communicate()
    done.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run failed ({proc.returncode})")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary["process_wall_s"] = time.perf_counter() - t0
    summary["peak_rss_mb"] = peak / 2**20
    return summary


def demo_job(n_prompts: int, num_images: int, out: str) -> dict[str, Any]:
    job = yaml.safe_load((ROOT / "jobs" / "demo.yaml").read_text())
    for section in ("generator", "clip"):  # paths in the demo spec are relative to jobs/
        for k, v in job[section].items():
            if isinstance(v, str) and v.startswith("."):
                job[section][k] = str((ROOT / "jobs" / v).resolve())
    colours = [f"c{i}" for i in range(n_prompts)]
    job["manifest"] = {"template": {"template": "a {colour} circle", "slots": {"colour": colours},
                                    "seeds": [0], "num_images": num_images}}
    job["name"] = f"bench{n_prompts * num_images}"
    job["output"] = {"url": out, "shard_max_samples": 1000}
    job["unit_size"] = 64
    return job


def main(small: int = 1000, scale: int = 10) -> dict[str, Any]:
    job = demo_job(10, small // 10, "")
    g = job["generator"]
    threads = job["resources"]["generate"]["torch_threads"]
    bare_args = dict(model=g["model"], batch=g["batch_size"], steps=g["steps"], size=g["height"],
                     guidance=g["guidance_scale"])
    res: dict[str, Any] = {"config": {**bare_args, "threads_per_actor": threads, "cpus": os.cpu_count()}}
    res["bare_images_per_s_same_threads"] = bare_loop(n=256, threads=threads, **bare_args)
    res["bare_images_per_s_all_threads"] = bare_loop(n=256, threads=os.cpu_count() or 1, **bare_args)
    pools = job["resources"]["generate"]["size"]
    res["bare_images_per_s_pool_equivalent"] = bare_loop(n=256, threads=threads, copies=pools, **bare_args)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for n in (small, small * scale):
            j = demo_job(10, n // 10, str(Path(tmp) / f"out{n}"))
            runs[n] = pipeline_run(j, Path(tmp))
    res["runs"] = runs
    big = runs[small * scale]
    st = big["stage_seconds"]
    per_actor = big["planned"] / st["generate (actor busy)"] if st["generate (actor busy)"] else 0.0
    e2e_wall = st["generate+embed+stage (wall)"] + st["curate"] + st["publish"]
    res["generation_in_pipeline_per_actor_images_per_s"] = per_actor
    res["ratio_generation_vs_bare_same_threads"] = per_actor / res["bare_images_per_s_same_threads"]
    # the pool as a whole (samples / streaming wall) vs the same number of bare loops side by side:
    # on a shared CPU the per-actor figure also pays for the embed actor, the driver and Ray
    res["generation_pool_images_per_s"] = big["planned"] / st["generate+embed+stage (wall)"]
    res["ratio_generation_pool_vs_bare_pool"] = (res["generation_pool_images_per_s"]
                                                 / res["bare_images_per_s_pool_equivalent"])
    res["end_to_end_images_per_s"] = big["planned"] / e2e_wall
    res["ratio_end_to_end_vs_bare_all_threads"] = res["end_to_end_images_per_s"] / res["bare_images_per_s_all_threads"]
    res["generator_actors"] = pools
    res["peak_rss_mb"] = {str(n): r["peak_rss_mb"] for n, r in runs.items()}
    res["rss_ratio_10x_vs_1x"] = runs[small * scale]["peak_rss_mb"] / runs[small]["peak_rss_mb"]
    return res


if __name__ == "__main__":
    small = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    out = main(small)
    (ROOT / "benchmarks" / "results" / "pipeline.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
