"""Shards written by Ray tasks: a small plan of boundaries, then one task per shard.

The plan (a task) walks the kept samples' sizes that curation returned per block and cuts them
exactly as one process rolling shards would (``shards.plan_shards``); the driver receives only the
segments of each shard (unit, first and last kept row). Each shard task reads its units from
staging, builds the records and writes every format of its shard whole (``Store.write_bytes``:
temp-then-rename on disk, one PUT on object stores), then returns its index entry (files, count,
sha256). Names and bytes depend only on the plan, so reruns and retries write the same objects.
"""

from __future__ import annotations

from typing import Any

from pipelines.config import JobSpec
from pipelines.contracts.record import build_record
from pipelines.contracts.unit import meta
from pipelines.execution.curate_plan import Curated, Executor, Where
from pipelines.publish.shards import embedding_ref, plan_shards, shard_row, write_shard

Segment = tuple[int, int, int, int]  # (block, unit in block, first kept row, end)


def _plan(max_samples: int, max_bytes: int, *blocks: dict[str, Any]) -> list[list[Segment]]:
    sizes: list[int] = []
    units: list[tuple[int, int, int]] = []  # (block, unit, kept samples)
    for b, pb in enumerate(blocks):
        for u, unit in enumerate(pb["units"]):
            sizes += unit["sizes"]
            units.append((b, u, len(unit["sizes"])))
    out: list[list[Segment]] = []
    ui, pos = 0, 0  # current unit, kept rows of it already placed
    for start, end in plan_shards(sizes, max_samples, max_bytes):
        segs: list[Segment] = []
        left = end - start
        while left:
            b, u, cnt = units[ui]
            take = min(cnt - pos, left)
            if take:
                segs.append((b, u, pos, pos + take))
            pos, left = pos + take, left - take
            if pos == cnt:
                ui, pos = ui + 1, 0
        out.append(segs)
    return out


def _write(n: int, segs: list[Segment], where: Where, name: str, formats: list[str], job: dict[str, str],
           label: Any, order: list[int], *blocks: dict[str, Any]) -> dict[str, Any]:
    staging = where.staging()
    rows: list[dict[str, Any]] = []
    for b, u, s0, s1 in segs:
        unit = blocks[order.index(b)]["units"][u]
        table = staging.read_unit(unit["unit_id"])
        gen, clip = meta(table, "synthgen.generator"), meta(table, "synthgen.clip")
        for row, flags in zip(table.take(unit["rows"][s0:s1]).to_pylist(), unit["flags"][s0:s1]):
            rec = build_record(row, gen, clip, job, unit["unit_id"], embedding_ref(n, len(rows)),
                               {"kept": True, "reasons": [], "flags": flags or []})
            png, rec = label(row["png"], rec, row) if label is not None else (row["png"], rec)
            rows.append(shard_row(row["sample_id"], png, row["prompt"], rec, row["image_emb"], row["text_emb"]))
    return write_shard(staging.store, name, formats, n, rows)


def _unit_meta(where: Where, unit_id: str) -> tuple[dict, dict]:
    t = where.staging().read_unit(unit_id, ["sample_id"])
    return meta(t, "synthgen.generator"), meta(t, "synthgen.clip")


def write_shards(spec: JobSpec, curated: Curated, where: Where, job: dict[str, str], last_unit: str | None,
                 label: Any = None) -> tuple[list[dict[str, Any]], dict | None, dict | None]:
    """(index entries of every shard in order, generator and CLIP info of the last unit). ``label``
    marks each published image (``pipelines.publish.label.Labeller``; None: as staged)."""
    ex: Executor = curated.executor
    out = spec.output
    plan = ex.get(ex.submit(_plan, out.shard_max_samples, out.shard_max_bytes, *curated.publish))
    futures = []
    for n, segs in enumerate(plan):
        order = sorted({b for b, *_ in segs})
        futures.append(ex.submit(_write, n, segs, where, spec.name, list(out.formats), job, label, order,
                                 *[curated.publish[b] for b in order]))
    info = ex.submit(_unit_meta, where, last_unit, num_returns=2) if last_unit else (None, None)
    return ex.get(futures), *(ex.get(list(info)) if last_unit else info)
