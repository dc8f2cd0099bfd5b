"""The job, end to end: manifest -> plan -> [Ray: generate -> embed -> stage] -> curate -> publish.

Everything before Ray validates and plans without writing; everything after reads staged units,
so a rerun of the same job skips units already staged.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipelines.plan import manifest

from pipelines.plan import samples as plan

from pipelines.plan import screen
from pipelines.config import JobSpec
from pipelines.errors import SpecError
from pipelines.io.lease import Lease
from pipelines.publish.provenance import model_configs_sha256, weights_sha256
from pipelines.publish.job import publish_dataset
from pipelines.contracts.decisions import parquet_bytes
from pipelines.contracts.unit import Staging
from pipelines.io.store import Store
from pipelines.execution.quota import QuotaLoop

Log = Callable[..., None]


def _quiet_log(event: str, **fields: Any) -> None:
    pass


def fingerprint(spec: JobSpec, manifest_hash: str) -> str:
    """Keys the staged units: covers what changes them (manifest content, prompt screen, models
    and their weights and config files, generation and embedding parameters, unit layout, thread counts: float
    rounding depends on them). Curation settings are not in it: retuning reuses staged units."""
    g, c = spec.generator, spec.clip
    written = spec.published_dump()  # model paths as the spec wrote them: the same job from any checkout
    payload = {
        "manifest": manifest_hash,
        "generator": written["generator"],
        "generator_weights": weights_sha256(g.model, g.revision),
        "generator_configs": model_configs_sha256(g.model, g.revision),  # e.g. the sampler's settings
        "clip": {k: v for k, v in written["clip"].items() if k != "batch_size"},
        "clip_weights": weights_sha256(c.pretrained),
        "clip_configs": [model_configs_sha256(c.tokenizer), model_configs_sha256(c.model_config_file)],
        "unit_size": spec.unit_size,
        "torch_threads": spec.resources.generate.torch_threads,
        "screen": {**screen.fingerprint(spec.screen), "spec": written["screen"]},  # settings and rule content
        "name": spec.name,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Prepared:
    spec: JobSpec
    manifest: pa.Table
    manifest_hash: str
    samples: plan.PlannedSamples  # every planned sample, screened or not (made on demand, none held)
    screened: list[dict[str, Any]]  # rows the prompt screen stopped: {sample_id, prompt_id, reasons}
    units: list[plan.UnitRange]  # the samples to generate, as manifest row ranges (workers expand them)
    fingerprint: str  # of the staged units
    quota_rows: dict[str, list[int]] = field(default_factory=dict)  # quota group -> its generating rows
    rounds: list[dict[str, Any]] = field(default_factory=list)  # quota rounds after the manifest's: round, samples

    @property
    def planned(self) -> int:
        """Samples planned over all rounds (screened ones included)."""
        return len(self.samples) + sum(r["samples"] for r in self.rounds)

    @property
    def dataset_fingerprint(self) -> str:
        """Of the published dataset: the units plus the curation that selected from them."""
        cur = json.dumps(self.spec.published_dump()["curation"], sort_keys=True)  # reference paths as written
        return hashlib.sha256(f"{self.fingerprint}|{cur}".encode()).hexdigest()[:16]


def check_models(spec: JobSpec) -> None:
    """Every model the job names must load here: a local folder with its index files, an open_clip name,
    a hub id (cached, when offline). Fails before Ray starts, naming the spec key (exit 2)."""
    from pathlib import Path

    from pipelines.embed.clip import model_problems
    from pipelines.generate.backends import model_problem

    problems = [model_problem(spec.generator, spec.as_written("generator.model")),
                *model_problems(spec.clip, spec.as_written)]
    clf, key = spec.curation.safety.classifier, "curation.safety.classifier.path"
    if clf and "://" not in clf.path and not Path(clf.path).is_file():
        problems.append(f"field '{key}': {spec.as_written(key)!r} not found")
    if any(problems):
        raise SpecError("\n".join(f"{spec.source}: {p}" for p in problems if p))
    from pipelines.config import ClipSpec
    from pipelines.embed.clip import remember_resolved

    remember_resolved(ClipSpec.model_validate(spec.published_dump()["clip"]), spec.clip)


def prepare(spec: JobSpec) -> Prepared:
    """Validate and plan; writes nothing (bad input fails here, before any output exists)."""
    check_models(spec)
    table = manifest.resolve(spec.manifest, spec.output.storage_options)
    source = spec.manifest.path or "manifest.template"
    manifest.check_backend_fields(table, source, spec.generator.backend)
    mhash = manifest.content_hash(table)
    p = plan.Plan(table, spec.generator, spec.screen, spec.unit_size)  # counts only, no samples
    quota_rows: dict[str, list[int]] = {}
    if spec.curation.targets is not None:  # one key per generating row: O(rows), never O(samples)
        from pipelines.curation.groups import group_keys

        attrs = table.column("attributes").to_pylist()
        for r, g in zip(p.rows.tolist(), group_keys([dict(attrs[r] or []) for r in p.rows.tolist()],
                                                    spec.curation.targets.group_by)):
            quota_rows.setdefault(g, []).append(r)
    return Prepared(spec, table, mhash, p.samples, p.screened(), p.units(), fingerprint(spec, mhash), quota_rows)


@dataclass
class RunResult:
    url: str
    fingerprint: str
    counts: dict[str, int]
    stage_seconds: dict[str, float]
    images_per_s: float
    units_generated: int
    units_reused: int
    failed: int = 0
    already_published: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def run(spec: JobSpec, *, overwrite: bool = False, quiet: bool = False, log: Log = _quiet_log) -> RunResult:
    t_start = time.time()
    times: dict[str, float] = {}
    t = time.perf_counter()
    prep = prepare(spec)
    times["plan"] = time.perf_counter() - t
    log("planned", samples=len(prep.samples), units=len(prep.units), fingerprint=prep.fingerprint)

    if prep.units:  # a pool the cluster can never host fails now, before anything is written
        from pipelines.execution.resources import check_pools_fit

        ensure_ray(spec.resources.ray_num_cpus, quiet=True)
        check_pools_fit(spec.resources)
    check_output_shared(spec, quiet)  # before anything is written
    store = spec.output.store()
    with Lease(store, stale_after_s=spec.output.lease_stale_after_s, heartbeat_s=spec.output.lease_stale_after_s / 6,
               wait_s=spec.output.lease_wait_s, log=log):  # installs store.guard: writes refuse once the lease is lost
        result = _run_leased(spec, prep, store, times, t_start, overwrite, quiet, log)
    if not store.list("_staging"):
        store.delete_prefix("_staging")
    return result


def _run_leased(spec: JobSpec, prep: Prepared, store: Store, times: dict[str, float], t_start: float,
                overwrite: bool, quiet: bool, log: Log) -> RunResult:
    from pipelines.publish.shards import INDEX, read_index

    index = read_index(store)
    if index is not None:
        same = index["job"].get("fingerprint") == prep.dataset_fingerprint
        if same and not overwrite and index["counts"].get("failed"):
            # published with holes (samples whose generation failed): staging was kept for this; the units
            # with failed samples are regenerated and the dataset republished whole
            log("refilling_failed_samples", failed=index["counts"]["failed"])
            overwrite = True
        if same and not overwrite:
            log("already_published", url=spec.output.url)
            return RunResult(spec.output.url, prep.dataset_fingerprint, index["counts"], times, 0.0, 0, len(prep.units),
                             already_published=True)
        if not overwrite:
            raise SpecError(
                f"{spec.output.url}: holds a dataset of a different job (fingerprint "
                f"{index['job'].get('fingerprint')}, this job {prep.dataset_fingerprint}); pass --overwrite to replace it"
            )
        store.delete(INDEX)  # the old dataset is absent from here on

    staging = Staging(store, prep.fingerprint)
    staging.store.write_bytes(f"{staging.prefix}/manifest.parquet", parquet_bytes(prep.manifest))
    if prep.screened:
        log("screened", samples=len(prep.screened))
    busy: dict[str, float] = {"generate": 0.0, "embed": 0.0}
    units = list(prep.units)
    n_generated, n_units, n_reused, gen_wall = _generate(spec, prep, units, staging, busy, quiet, log)

    from pipelines.execution.curate_plan import Where, choose_executor, curate_units
    from pipelines.execution.publish_plan import write_shards
    from pipelines.publish.job import clear_outputs, job_of, labeller

    clear_outputs(store)  # no index exists: whatever is under the dataset's prefixes is not a dataset
    curate_s = 0.0
    quota = QuotaLoop(spec, prep) if spec.curation.targets is not None else None
    while True:  # one pass without targets; with them, until every group is met or declared unachievable
        t = time.perf_counter()
        unit_ids = [u.unit_id for u in units]
        ex = choose_executor(sum(u.n for u in units), None, spec.resources.ray_num_cpus)
        curated = curate_units(spec, unit_ids, staging, prep.screened, executor=ex)  # workers write the decisions
        curate_s += time.perf_counter() - t
        store.check_writable()  # and between stages: a run that lost its lease publishes nothing
        more = quota.next_round(curated, staging) if quota is not None else []
        if not more:
            break
        log("quota_round", round=quota.round, samples=sum(u.n for u in more), groups=len(quota.short))
        units += more
        g, u, r, w = _generate(spec, prep, more, staging, busy, quiet, log)
        n_generated, n_units, n_reused, gen_wall = n_generated + g, n_units + u, n_reused + r, gen_wall + w
    if quota is not None:
        curated.summary["targets"] = quota.summary(curated)
    times["generate+embed+stage (wall)"] = gen_wall
    times["curate"] = curate_s
    ips = n_generated / gen_wall if n_generated else 0.0
    n_failed = sum(v for k, v in curated.rejections.items() if k.startswith("generation_failed"))
    log("curated", kept=curated.kept, rejected=prep.planned - curated.kept)
    log("publishing", what="shards, decisions, provenance, card, report, index")

    t = time.perf_counter()
    shards, gen_info, clip_info = write_shards(spec, curated, Where(spec.output.model_dump(), prep.fingerprint),
                                               job_of(prep), unit_ids[-1] if unit_ids else None, labeller(prep))
    counts = publish_dataset(store, prep, curated, shards, gen_info, clip_info, stage_seconds={**times, **{
        f"{k} (actor busy)": v for k, v in busy.items()}}, started=t_start)
    times["publish"] = time.perf_counter() - t
    if not spec.output.keep_staging and not n_failed:  # with failed samples a rerun regenerates only their units
        staging.clear()
    log("published", url=spec.output.url, **counts)
    if n_failed:
        log("failed_samples", count=n_failed,
            first=next(k for k in sorted(curated.rejections) if k.startswith("generation_failed")))
    return RunResult(spec.output.url, prep.dataset_fingerprint, counts, {**times, **{f"{k} (actor busy)": v for k, v in
                     busy.items()}}, ips, n_units, n_reused, failed=n_failed,
                     extra={"targets": curated.summary.get("targets")} if quota is not None else {})


def _generate(spec: JobSpec, prep: Prepared, units: list[plan.UnitRange], staging: Staging, busy: dict[str, float],
              quiet: bool, log: Log) -> tuple[int, int, int, float]:
    """Generate, embed and stage the units not staged yet: (samples and units generated, units reused,
    wall seconds)."""
    staged = staging.staged_ids()
    pending = [u for u in units if u.unit_id not in staged]
    log("resume", staged=len(units) - len(pending), pending=len(pending))
    t = time.perf_counter()
    if pending:
        from pipelines.execution.ray_plan import run_units

        from tqdm import tqdm

        bar = tqdm(total=len(pending), desc="generate", unit="unit", disable=quiet, dynamic_ncols=True)
        with_inputs = any(prep.manifest.column(c).null_count < prep.manifest.num_rows
                          for c in ("init_image", "mask_image", "style_image"))
        for res in run_units(spec, pending, staging, quiet=quiet, with_inputs=with_inputs):
            bar.update(1)
            staging.store.check_writable()  # LeaseLost: another run took this output over; stop between units
            busy["generate"] += res["gen_ms"] / 1000
            busy["embed"] += res["clip_ms"] / 1000
            log("unit_staged", unit=res["unit_id"], samples=res["n"])
        bar.close()
    return sum(u.n for u in pending), len(pending), len(units) - len(pending), time.perf_counter() - t


def check_output_shared(spec: JobSpec, quiet: bool = False) -> None:
    """Workers on every node write the output; a local path on a multi-node cluster would scatter the
    dataset over each node's own disk, so it is refused (exit 2) unless the cluster has one node."""
    url = spec.output.url
    if ("://" in url and not url.startswith("file://")) or not (os.environ.get("RAY_ADDRESS") or _ray_up()):
        return  # an object store, or the one-machine cluster this process starts itself
    import ray

    ensure_ray(spec.resources.ray_num_cpus, quiet=quiet)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        raise SpecError(f"field 'output.url': {url!r} is a local path, but the Ray cluster has {len(nodes)} nodes "
                        "and each would write to its own disk; use a shared store URL (s3://, gs://, ...)")


def _ray_up() -> bool:
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def ensure_ray(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Join ``RAY_ADDRESS`` if set (a cluster), else start a local cluster (one machine). ``quiet``: Ray's
    own INFO/WARNING lines and the workers' output stay in Ray's session logs, off the driver's stderr."""
    import logging

    import ray

    if ray.is_initialized():
        return
    level = logging.ERROR if quiet else logging.INFO
    if quiet:
        import ray.data  # noqa: F401 - configures its own "ray.data" logger on import; quieten it after

        logging.getLogger("ray.data").setLevel(level)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=not quiet, logging_level=level)
    else:
        # Ray keeps at most `num_workers_soft_limit` workers (default: the CPU count). On a small machine the
        # actor pools alone reach that, so each stage_units task got a fresh worker (importing torch) that was
        # killed again when idle: that churn took ~10-20% of the generators' CPU on 2 cores (768 samples:
        # 50-55 s -> 45 s). A higher limit keeps the task workers warm.
        limit = max(8, 2 * (num_cpus or os.cpu_count() or 1))
        # address='local': always a new cluster, never one some `ray start` left on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=not quiet,
                 logging_level=level, _system_config={"num_workers_soft_limit": limit})
