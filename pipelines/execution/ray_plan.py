"""Thin Ray Data adapters around the pure unit functions; the chain, one Ray row per work unit:

    units -> fetch_inputs_stage (CPU tasks: read + decode init/mask/style images)
      -> GenerateActor (GPU actors: diffusion only, returns raw pixels)
      -> EmbedActor (CLIP from the pixels; may share the GPU: fractional num_gpus)
      -> encode_units (CPU tasks: labelled PNG, pixel sha256, pHash) -> stage_units (write whole)

One Ray row is one work unit, so batching in Ray never splits a unit; actors hold their model
for their lifetime. Resources (pool size, CPUs, GPUs, torch threads) come from the job spec;
fractional CPUs let the CPU tasks run beside the actors on small machines. The GPU actor does no
storage I/O, decoding or encoding, so it never waits on a CPU thread.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.config import ClipSpec, GeneratorSpec, JobSpec, OutputSpec
from pipelines.errors import SynthgenError
from pipelines.plan.samples import Sample, UnitRange, unit_samples
from pipelines.contracts.unit import Staging, from_ipc, to_ipc

if TYPE_CHECKING:
    import pyarrow as pa


@functools.lru_cache(maxsize=8)
def _staged_manifest(output_json: str, prefix_fp: str, name: str = "manifest.parquet") -> "pa.Table":
    """The job's canonical manifest (or a quota round's table) as staged by the driver, read once per
    worker process."""
    import io

    import pyarrow.parquet as pq

    staging = Staging(OutputSpec.model_validate_json(output_json).store(), prefix_fp)
    return pq.read_table(io.BytesIO(staging.store.read_bytes(f"{staging.prefix}/{name}")))


def _samples_json(ranges: Any, output_json: str, prefix_fp: str, gen: dict[str, Any]) -> list[str]:
    spec = GeneratorSpec.model_validate(gen)
    out = []
    for r in ranges:
        unit = UnitRange.from_json(r)
        table = _staged_manifest(output_json, prefix_fp, unit.manifest)
        out.append(json.dumps([s.to_dict() for s in unit_samples(table, unit, spec)]))
    return out


def expand_units(batch: dict[str, np.ndarray], output_json: str, prefix_fp: str, gen: dict[str, Any]) -> dict[str, np.ndarray]:
    """Row ranges -> the units' samples, on a worker: the driver never holds a sample."""
    samples = _samples_json(batch["range"], output_json, prefix_fp, gen)
    return {"unit_id": batch["unit_id"], "samples": np.array(samples, dtype=object)}


def fetch_inputs_stage(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decoded input images per unit (empty bytes when the unit has none)."""
    from pipelines.generate.inputs import fetch_inputs

    out = []
    for samples_json in batch["samples"]:
        table = fetch_inputs([Sample(**d) for d in json.loads(samples_json)])
        out.append(b"" if table is None else to_ipc(table))
    return {"unit_id": batch["unit_id"], "samples": batch["samples"], "inputs": np.array(out, dtype=object)}


class GenerateActor:
    def __init__(self, gen: dict[str, Any], torch_threads: int, model_label: str | None = None,
                 expand: tuple[str, str] | None = None):
        import torch

        self.gen, self.expand = gen, expand  # expand: (output_json, prefix_fp) when rows arrive as row ranges

        from pipelines.generate.backends import load_backend

        torch.set_num_threads(torch_threads)
        self.spec = GeneratorSpec.model_validate(gen)
        self.backend = load_backend(self.spec, model_label)  # records show the model as the spec wrote it

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipelines.generate.faults import DeviceLostError
        from pipelines.generate.inputs import read_inputs
        from pipelines.generate.unit import generate_unit

        payloads = []
        if "samples" not in batch:  # no input images to fetch: the actor expands its own row ranges
            batch = {"unit_id": batch["unit_id"], "samples": _samples_json(batch["range"], *self.expand, self.gen)}
        inputs_col = batch["inputs"] if "inputs" in batch else [b""] * len(batch["samples"])
        for samples_json, inputs in zip(batch["samples"], inputs_col):
            samples = [Sample(**d) for d in json.loads(samples_json)]
            decoded = read_inputs(from_ipc(inputs) if inputs else None, samples)
            try:
                table = generate_unit(self.backend, samples, self.spec.batch_size, decoded, self.spec.pad_batches)
            except DeviceLostError as e:
                # The CUDA context is gone for good in this process: exit, so Ray restarts the actor and
                # retries this unit on a fresh one (Ray Data's actor pools: max_restarts=-1, max_task_retries=-1).
                print(f"synthgen: device lost in generator actor, exiting for a restart: {e}", file=sys.stderr,
                      flush=True)
                os._exit(70)
            payloads.append(to_ipc(table))
        return {"unit_id": batch["unit_id"], "payload": np.array(payloads, dtype=object)}


class EmbedActor:
    def __init__(self, clip: dict[str, Any], torch_threads: int):
        import torch

        from pipelines.embed.clip import ClipEmbedder

        torch.set_num_threads(torch_threads)
        self.embedder = ClipEmbedder(ClipSpec.model_validate(clip))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipelines.embed.clip import embed_unit

        payloads = [to_ipc(embed_unit(self.embedder, from_ipc(p))) for p in batch["payload"]]
        return {"unit_id": batch["unit_id"], "payload": np.array(payloads, dtype=object)}


def encode_units(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raw pixels -> labelled PNGs, pixel hashes and pHash (CPU, beside the GPU actors)."""
    from pipelines.generate.encode import encode_unit

    payloads = [to_ipc(encode_unit(from_ipc(p))) for p in batch["payload"]]
    return {"unit_id": batch["unit_id"], "payload": np.array(payloads, dtype=object)}


def stage_units(batch: dict[str, np.ndarray], output: dict[str, Any], prefix_fp: str) -> dict[str, np.ndarray]:
    """Write each finished unit whole to staging; return only small stats to the driver."""
    out = OutputSpec.model_validate(output)
    staging = Staging(out.store(), prefix_fp)
    stats: dict[str, list[Any]] = {"unit_id": [], "n": [], "gen_ms": [], "clip_ms": [], "bytes": []}
    for uid, payload in zip(batch["unit_id"], batch["payload"]):
        table = from_ipc(payload)
        stats["unit_id"].append(uid)
        stats["n"].append(table.num_rows)
        stats["gen_ms"].append(float(sum(table.column("gen_ms").to_pylist())))
        stats["clip_ms"].append(float(sum(table.column("clip_ms").to_pylist())))
        stats["bytes"].append(staging.write_unit(str(uid), table))
    return {k: np.array(v) for k, v in stats.items()}


def run_units(spec: JobSpec, units: list[UnitRange], staging: Staging, quiet: bool = False,
              with_inputs: bool = True) -> Iterator[dict[str, Any]]:
    """Stream ``units`` through fetch -> generate -> embed -> encode -> stage; yield one stats dict per staged unit.

    ``with_inputs=False`` (no manifest row names an input image): the generator actors expand their own
    row ranges (the manifest read once per actor) and there is no fetch stage, so every unit is queued
    for the pool at once instead of trickling out of upstream tasks to whichever actor is idle first
    (with tiny units one actor took them all)."""
    import ray
    import ray.data

    from pipelines.execution.runner import ensure_ray

    ensure_ray(spec.resources.ray_num_cpus, quiet)
    ctx = ray.data.DataContext.get_current()
    # synthgen shows its own progress per stage (a bar of staged units); Ray Data's bars and progress log
    # lines would interleave with it
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    # Start streaming only once every actor holds its model: work spreads over the whole pool, and
    # a pool that cannot fit the cluster fails with an error instead of hanging.
    ctx.wait_for_min_actors_s = spec.resources.actor_start_timeout_s
    gen_pool, emb_pool, cpu_pool = spec.resources.generate, spec.resources.embed, spec.resources.encode
    prefix_fp = staging.prefix.split("/", 1)[1]
    items = [{"unit_id": u.unit_id, "range": u.to_json()} for u in units]  # row ranges: no samples here
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    if with_inputs:
        ds = (ds.map_batches(expand_units, batch_size=1, num_cpus=0.1, fn_kwargs={
                  "output_json": spec.output.model_dump_json(), "prefix_fp": prefix_fp,
                  "gen": spec.generator.model_dump()})
              .map_batches(fetch_inputs_stage, batch_size=1, num_cpus=0.1,
                           compute=ray.data.TaskPoolStrategy(size=cpu_pool.size)))
    ds = (
        ds.map_batches(
            GenerateActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=gen_pool.size,
                                                                     max_tasks_in_flight_per_actor=gen_pool.max_units_in_flight),
            num_cpus=gen_pool.num_cpus, num_gpus=gen_pool.num_gpus,
            fn_constructor_kwargs={"gen": spec.generator.model_dump(), "torch_threads": gen_pool.torch_threads,
                                   "model_label": spec.as_written("generator.model"),
                                   "expand": None if with_inputs else (spec.output.model_dump_json(), prefix_fp)},
        )
        .map_batches(
            EmbedActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=emb_pool.size,
                                                                     max_tasks_in_flight_per_actor=emb_pool.max_units_in_flight),
            num_cpus=emb_pool.num_cpus, num_gpus=emb_pool.num_gpus,
            fn_constructor_kwargs={"clip": spec.clip.model_dump(), "torch_threads": emb_pool.torch_threads},
        )
        .map_batches(encode_units, batch_size=1, num_cpus=cpu_pool.num_cpus,
                     compute=ray.data.TaskPoolStrategy(size=cpu_pool.size))
        .map_batches(
            stage_units, batch_size=1, num_cpus=0.1,
            fn_kwargs={"output": spec.output.model_dump(), "prefix_fp": prefix_fp},
        )
    )
    t0 = time.perf_counter()
    try:
        for row in ds.iter_rows():
            row["elapsed_s"] = time.perf_counter() - t0
            yield row
    except ray.exceptions.GetTimeoutError as e:
        if "starting actors" not in str(e):
            raise
        raise SynthgenError(
            f"actor pools did not start within {spec.resources.actor_start_timeout_s} s: the cluster lacks the "
            f"resources they claim (generate: {gen_pool.size} x {gen_pool.num_cpus} CPU, {gen_pool.num_gpus} GPU; "
            f"embed: {emb_pool.size} x {emb_pool.num_cpus} CPU, {emb_pool.num_gpus} GPU; cluster: "
            f"{ray.cluster_resources()})"
        ) from None
