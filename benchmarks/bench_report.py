"""Audit-report generation time and peak memory for 1k, 3k and 10k published samples.

The datasets are published the way ``publish_job`` does it (``ShardWriter``: webdataset + Parquet shards,
embeddings, decisions, curation.json with a bias audit per stage, timings, manifest, provenance), filled with
toy-world images whose attributes follow their prompts most of the time (so the judge and the alignment
numbers have something to find), embedded with the shipped toy CLIP. A 5,000-image procedural reference set
is embedded with the same CLIP, so every section (CMMD, FD, PRDC, memorisation) is computed.

Each size is measured in a fresh process: time of ``build_report`` + writing both files (heavy imports done
before the clock starts, their cost reported apart) and the peak resident set while the report is built
(``/proc/self/statm`` sampled every 10 ms; the high-water mark of the process is dominated by importing
torch, so it is reported apart), so the growth from 1k to 10k can be compared with the size of the
embeddings held in memory.

``python -m benchmarks.bench_report [--sizes 1000,3000,10000] [--reference 5000] [--results PATH]
[--baseline-tree DIR]`` -> ``benchmarks/results/report.json`` (or ``PATH``). ``--baseline-tree``: also measure
the report code of another checkout on the same datasets (``git archive <commit> | tar -x -C DIR``), so a
change's effect on time and memory is measured on one machine at one time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache" / "bench-report"
RESULTS = ROOT / "benchmarks" / "results" / "report.json"
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SHAPES = ("circle", "square", "triangle")
P_WRONG = 0.15  # share of samples whose colour or shape misses the prompt
P_REJECT = 0.03


def clip_spec() -> dict:
    from pipelines.toyworld import models as tm

    return {"model": tm.CLIP_NAME, "pretrained": str(tm.CLIP_WEIGHTS), "model_config_file": str(tm.CLIP_CONFIG),
            "tokenizer": str(tm.CLIP_TOKENIZER), "batch_size": 256}


def build_dataset(out: Path, n: int, seed: int = 0) -> None:
    """A published dataset of ``n`` generated samples (about 3% rejected) without running generation."""
    import pyarrow as pa
    from PIL import Image

    from pipelines.curation import bias
    from pipelines.config import ClipSpec
    from pipelines.embed.clip import ClipEmbedder, clip_score
    from pipelines.publish.shards import ShardWriter, write_index, write_json, write_parquet
    from pipelines.contracts.record import build_record
    from pipelines.io.store import Store
    from pipelines.toyworld import world

    rng = np.random.default_rng(seed)
    embedder = ClipEmbedder(ClipSpec.model_validate(clip_spec()))
    groups = [(c, s) for c in COLOURS for s in SHAPES]
    prompts = [(c, s, k) for c, s in groups for k in range(4)]  # 4 seeds per prompt group
    rows, images = [], []
    for i in range(n):
        c, s, k = prompts[i % len(prompts)]
        pid = f"p-{c}-{s}-s{k}"
        idx = i // len(prompts)
        colour, shape = c, s
        if rng.random() < P_WRONG:
            colour, shape = (COLOURS[rng.integers(6)], s) if rng.random() < 0.5 else (c, SHAPES[rng.integers(3)])
        spec = world.ShapeSpec(shape, colour, ("small", "large")[rng.integers(2)],
                               world.POSITIONS[rng.integers(len(world.POSITIONS))])
        attrs = world.Attributes("shapes", (spec,), tuple(world.BACKGROUNDS)[rng.integers(3)])
        arr = world.render(attrs, seed * 1_000_003 + i)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        rows.append({"sample_id": f"{pid}_{idx:05d}", "prompt_id": pid, "index": idx, "prompt": f"a {c} {s}",
                     "negative_prompt": None, "seed": 1000 * k + idx, "steps": 10, "guidance_scale": 4.0,
                     "height": 32, "width": 32, "attributes": [("colour", c), ("shape", s)], "png": buf.getvalue(),
                     "pixel_sha256": f"{i:064x}", "perceived": colour})
        images.append(Image.fromarray(arr))
    img = np.concatenate([embedder.image_embeddings(images[j:j + 512]) for j in range(0, n, 512)])
    texts = sorted({r["prompt"] for r in rows})
    temb = dict(zip(texts, embedder.text_embeddings(texts)))
    txt = np.stack([temb[r["prompt"]] for r in rows])
    scores = clip_score(img, txt)
    kept = rng.random(n) >= P_REJECT
    store = Store(str(out))
    writer = ShardWriter(store, "bench", ["webdataset", "parquet"], 1000, 1 << 30)
    gen = {"backend": "procedural", "model": "toyworld.render (stands in for a generator)", "weights_sha256": None,
           "pipeline_class": "pipelines.toyworld.world", "scheduler": "-", "dtype": "float32", "device_type": "cpu"}
    job = {"name": "bench", "fingerprint": f"bench{n}"}
    for i, r in enumerate(rows):
        r["clip_score"] = float(scores[i])
        if kept[i]:
            rec = build_record(r, gen, embedder.info, job, f"u{i // 256:06d}", writer.embedding_ref(),
                               {"kept": True, "reasons": []})
            writer.add(r["sample_id"], r["png"], r["prompt"], rec, img[i].tolist(), txt[i].tolist())
    writer.flush()
    group_of = [f"colour={r['attributes'][0][1]},shape={r['attributes'][1][1]}" for r in rows]
    labels = {"colour": np.array([COLOURS.index(r["perceived"]) for r in rows])}
    values = {"colour": list(COLOURS)}
    audit = [{"stage": "generated", "remaining": n, "removed": 0,
              "audit": bias.audit(labels, values, group_of, np.ones(n, bool), 200, 0.95, 0)},
             {"stage": "exact_dedup", "remaining": int(kept.sum()), "removed": int((~kept).sum()),
              "audit": bias.audit(labels, values, group_of, kept, 200, 0.95, 0)}]
    decisions = pa.table({
        "sample_id": [r["sample_id"] for r in rows], "prompt_id": [r["prompt_id"] for r in rows],
        "kept": kept.tolist(), "reasons": pa.array([[] if k else ["exact_duplicate"] for k in kept],
                                                   pa.list_(pa.string())),
        "flags": pa.array([[] for _ in rows], pa.list_(pa.string())), "clip_score": scores,
        "attr_labels": pa.array([[("colour", r["perceived"])] for r in rows], pa.map_(pa.string(), pa.string())),
        "sem_nn_cos": rng.random(n).astype(np.float32)})
    manifest = pa.table({"prompt_id": [f"p-{c}-{s}-s{k}" for c, s, k in prompts],
                         "prompt": [f"a {c} {s}" for c, s, k in prompts],
                         "attributes": pa.array([[("colour", c), ("shape", s)] for c, s, k in prompts],
                                                pa.map_(pa.string(), pa.string()))})
    timings = pa.table({"sample_id": [r["sample_id"] for r in rows], "gen_ms": [20.0] * n, "clip_ms": [6.6] * n,
                        "gen_worker": [f"w{i % 2}" for i in range(n)]})
    files = {"decisions.parquet": write_parquet(store, "decisions.parquet", decisions),
             "manifest.parquet": write_parquet(store, "manifest.parquet", manifest),
             "timings.parquet": write_parquet(store, "timings.parquet", timings),
             "curation.json": write_json(store, "curation.json", {"version": 1, "stages": audit}),
             "provenance.json": write_json(store, "provenance.json", {
                 "job": job, "job_spec": {"clip": clip_spec(), "description": "report benchmark"},
                 "models": {"generator": gen, "clip": embedder.info},
                 "stage_seconds": {"generate+embed+stage (wall)": n * 0.02, "curate": 1.0},
                 "counts": {"planned": n, "kept": int(kept.sum()), "rejected": int((~kept).sum())}})}
    counts = {"planned": n, "kept": int(kept.sum()), "rejected": int((~kept).sum()), "shards": len(writer.shards),
              "prompts": len(prompts)}
    write_index(store, job=job, shards=writer.shards, files=files, counts=counts)


def measure(dataset: str, reference: str, out: str) -> dict:
    """In this (fresh) process: import cost, then report time and peak RSS."""
    import resource

    t0 = time.perf_counter()
    import matplotlib.pyplot  # noqa: F401 - heavy imports outside the timed part
    import open_clip  # noqa: F401
    import torch  # noqa: F401

    from pipelines.report import build as R
    import pipelines.toyworld.judge  # noqa: F401

    t_import = time.perf_counter() - t0
    import gc
    import threading

    gc.collect()
    page = os.sysconf("SC_PAGE_SIZE") / 2**20

    def rss_mb() -> float:  # current resident set, not the high-water mark
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    rss_import = rss_mb()
    samples = [rss_import]
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            samples.append(rss_mb())
            done.wait(0.01)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t0 = time.perf_counter()
    _, _, rep = R.write_report(dataset, out, reference)
    seconds = time.perf_counter() - t0
    done.set()
    th.join()
    peak = max(samples + [rss_mb()])
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ref = rep["reference"]
    return {"seconds": round(seconds, 2), "import_seconds": round(t_import, 2), "peak_rss_mb": round(peak, 1),
            "process_peak_rss_mb": round(process_peak, 1), "rss_after_imports_mb": round(rss_import, 1),
            "report_rss_growth_mb": round(peak - rss_import, 1),
            "published": rep["summary"]["published_samples"], "groups": rep["groups"]["count"],
            "embedding_dim": rep["diversity"]["vendi"]["overall"]["embedding_dim"],
            "html_mb": round(Path(out).stat().st_size / 2**20, 2),
            "cmmd": ref["cmmd"], "fd": ref["fd"], "prdc": ref["prdc"],
            "judged": rep["alignment"]["judge"].get("judged"),
            "judge_all_correct": rep["alignment"]["judge"].get("all_specified_correct")}


def _measure_in(tree: Path, ds: Path, ref: Path, out: Path) -> dict:
    """``--measure`` in a fresh process running the report code of ``tree``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tree)}
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_report", "--measure", str(ds), str(ref), str(out)],
                         cwd=tree, capture_output=True, text=True, env=env)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"measure failed for {ds} with {tree}:\n{res.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1000,3000,10000")
    p.add_argument("--reference", type=int, default=5000)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--baseline-tree", help="another checkout whose report code is measured on the same datasets")
    p.add_argument("--measure", nargs=3, metavar=("DATASET", "REFERENCE", "OUT"))
    a = p.parse_args()
    if a.measure:
        print("RESULT " + json.dumps(measure(*a.measure)))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    CACHE.mkdir(parents=True, exist_ok=True)
    from pipelines.toyworld.reference import build_toyworld_reference

    ref = CACHE / f"ref-{a.reference}"
    if not (ref / "reference.parquet").exists():
        t = time.perf_counter()
        build_toyworld_reference(str(ref), clip_spec(), n=a.reference, seed=7)
        print(f"reference: {a.reference} images in {time.perf_counter() - t:.1f} s", flush=True)
    runs = []
    for n in [int(x) for x in a.sizes.split(",")]:
        ds = CACHE / f"ds-{n}"
        if not (ds / "index.json").exists():
            t = time.perf_counter()
            build_dataset(ds, n)
            print(f"dataset: {n} samples in {time.perf_counter() - t:.1f} s", flush=True)
        r = {"samples_generated": n, **_measure_in(ROOT, ds, ref, CACHE / f"report-{n}.html")}
        r["embeddings_mb"] = round(r["published"] * r["embedding_dim"] * 4 * 2 / 2**20, 2)  # image + text, f32
        print(f"n={n}: {r['seconds']} s, peak RSS {r['peak_rss_mb']} MB (+{r['report_rss_growth_mb']} MB over "
              f"imports), HTML {r['html_mb']} MB", flush=True)
        if a.baseline_tree:
            b = _measure_in(Path(a.baseline_tree).resolve(), ds, ref, CACHE / f"report-{n}-baseline.html")
            r["baseline"] = {k: b[k] for k in ("seconds", "peak_rss_mb", "rss_after_imports_mb", "report_rss_growth_mb",
                                               "html_mb")}
            print(f"  baseline: {b['seconds']} s, +{b['report_rss_growth_mb']} MB over imports", flush=True)
        runs.append(r)
    small, big = runs[0], runs[-1]

    def ratio(get: Any) -> float | None:
        lo, hi = get(small), get(big)
        return None if lo is None or hi is None else round(hi / max(lo, 1e-9), 2)

    summary = {
        "what": "synthgen report (build_report + write report.html/report.json) on published toy-world datasets "
                f"with a {a.reference}-image reference set; fresh process per size, heavy imports excluded from "
                "'seconds'; report_rss_growth_mb = peak resident set while the report is built minus after imports",
        "machine": {"cpus": os.cpu_count()}, "reference_images": a.reference, "runs": runs,
        "goal_seconds_10k": 60,
        "meets_time_goal": next((r["seconds"] < 60 for r in runs if r["samples_generated"] == 10000), None),
        "rss_growth_ratio_largest_vs_smallest": ratio(lambda r: r["report_rss_growth_mb"]),
        "peak_rss_ratio_largest_vs_smallest": ratio(lambda r: r["peak_rss_mb"]),
    }
    if a.baseline_tree:
        summary["baseline_tree"] = str(a.baseline_tree)
        summary["baseline_rss_growth_ratio_largest_vs_smallest"] = ratio(
            lambda r: r.get("baseline", {}).get("report_rss_growth_mb"))
        summary["baseline_peak_rss_ratio_largest_vs_smallest"] = ratio(lambda r: r.get("baseline", {}).get("peak_rss_mb"))
    out = Path(a.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
