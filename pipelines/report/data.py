"""Reading a published dataset for the audit report, through :class:`~pipelines.io.store.Store` so any fsspec
URL works: the index's shards (Parquet or webdataset tar, streamed one at a time), the light per-sample
columns, the embeddings, and a defensive view of ``decisions.parquet`` (whatever extra columns curation
wrote). Images stay in the shards until :func:`read_pngs` fetches the few the report shows or judges."""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contracts.decisions import DECISIONS, TIMINGS, parts
from pipelines.curation.groups import group_key  # noqa: F401 - the one group key (curation's), re-exported
from pipelines.report.settings import ReportError
from pipelines.io.store import Store

KNOWN_DECISION_COLUMNS = {"sample_id", "prompt_id", "kept", "reasons", "flags", "stage", "clip_score"}
# what an extra decisions column (or a rejection reason) is about, judged by its name
SAFETY = re.compile(r"safety|nsfw|unsafe|concept", re.I)
REFSIM = re.compile(r"(ref|reference|protected|memor).*(sim|top1|top_1|cos)|(sim|top1|top_1|cos).*(ref|protected)",
                    re.I)
DUPSIM = re.compile(r"dup|near|nn_sim|nn_cos|nn_distance|neighbo|prior_top1", re.I)
_ATTR = re.compile(r"attr|perceived|zero_shot|zeroshot|zs_", re.I)


# ============================================================================ helpers


def not_none(values: Iterable[Any]) -> list[Any]:
    """The values that are present: nullable columns hold None where a sample has no value."""
    return [v for v in values if v is not None]


def read_json(store: Store, key: str) -> Any | None:
    if not store.exists(key):
        return None
    return json.loads(store.read_bytes(key))


def read_parquet(store: Store, key: str, columns: list[str] | None = None) -> pa.Table | None:
    """The table at ``key`` (None when absent); requested columns the file lacks are skipped."""
    if not store.exists(key):
        return None
    # Whole-object reads go through the store's retries (a flaky bucket must not break the report).
    pf = pq.ParquetFile(io.BytesIO(store.read_bytes(key)))
    cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
    return pf.read(columns=cols)


def read_parts(store: Store, index: dict[str, Any], name: str, columns: list[str] | None = None) -> pa.Table | None:
    """A per-sample table the workers wrote as parts (``decisions.parquet/part-*``), or an older single file."""
    tables = [t for t in (read_parquet(store, k, columns) for k in parts(index, name)) if t is not None]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def emb_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float> column as an n x d float32 matrix."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(arr), -1)


# ============================================================================ shards


@dataclass
class ShardFiles:
    no: int
    parquet: str | None
    tar: str | None
    emb: str | None
    count: int


def _shard_files(index: dict[str, Any]) -> list[ShardFiles]:
    out = []
    for s in index.get("shards", []):
        files = list(s.get("files", {}))
        out.append(ShardFiles(
            int(s["shard"]), next((k for k in files if k.startswith("shards/") and k.endswith(".parquet")), None),
            next((k for k in files if k.startswith("shards/") and k.endswith(".tar")), None),
            next((k for k in files if k.startswith("embeddings/")), None), int(s.get("count", 0))))
    return out


def _iter_tar(store: Store, key: str, want: set[str]) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) of a webdataset tar's members with an extension in ``want``, streamed."""
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(key)), mode="r|") as tf:
        for member in tf:
            if not member.isfile():
                continue
            base, _, ext = member.name.rpartition("/")[2].partition(".")
            if ext in want:
                data = tf.extractfile(member)
                yield base, ext, data.read() if data else b""


def iter_records(store: Store, shard: ShardFiles) -> Iterator[dict[str, Any]]:
    """Sample records of one shard, in shard order (Parquet ``record`` column, else the tar's json)."""
    if shard.parquet:
        t = read_parquet(store, shard.parquet, ["record"])
        for r in t.column("record").to_pylist():
            yield json.loads(r)
    elif shard.tar:
        for _, _, data in _iter_tar(store, shard.tar, {"json"}):
            yield json.loads(data)


def read_pngs(store: Store, shard: ShardFiles, ids: set[str]) -> dict[str, bytes]:
    """PNG bytes of the samples ``ids`` of one shard."""
    out: dict[str, bytes] = {}
    if not ids:
        return out
    if shard.parquet:
        t = read_parquet(store, shard.parquet, ["sample_id", "png"])
        sid = t.column("sample_id").to_pylist()
        png = t.column("png")
        for i, s in enumerate(sid):
            if s in ids:
                out[s] = png[i].as_py()
    elif shard.tar:
        for key, _, data in _iter_tar(store, shard.tar, {"png"}):
            if key in ids:
                out[key] = data
    return out


# ============================================================================ the dataset


@dataclass
class Samples:
    """Per published sample, in publish order: light columns only."""

    ids: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    prompt: list[str] = field(default_factory=list)
    clip: list[float] = field(default_factory=list)
    pixel: list[str] = field(default_factory=list)
    shard: list[int] = field(default_factory=list)
    img_emb: np.ndarray | None = None
    txt_emb: np.ndarray | None = None

    def rows_by_group(self) -> defaultdict[str, list[int]]:
        """Sample rows of each prompt group, ascending; a group without published samples reads as []."""
        out: defaultdict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(self.group):
            out[g].append(i)
        return out


@dataclass
class Dataset:
    store: Store
    index: dict[str, Any]
    provenance: dict[str, Any]
    shards: list[ShardFiles]
    samples: Samples
    decisions: pa.Table | None
    timings: pa.Table | None
    manifest: pa.Table | None
    curation: Any | None
    group_attrs: dict[str, dict[str, str]]


def load_dataset(store: Store, index: dict[str, Any] | None = None) -> Dataset:
    """Everything light plus the embeddings; images stay in the shards."""
    if index is None:
        index = read_json(store, "index.json")
        if index is None:
            raise ReportError(f"{store.url}: no index.json (not a published synthgen dataset, or not finished)")
    provenance = read_json(store, "provenance.json") or {}
    shards = _shard_files(index)
    s = Samples()
    group_attrs: dict[str, dict[str, str]] = {}
    embs_i, embs_t = [], []
    for sh in shards:
        ids_here = []
        for rec in iter_records(store, sh):
            g = group_key(rec.get("attributes"))
            group_attrs.setdefault(g, dict(rec.get("attributes") or {}))
            s.ids.append(rec["sample_id"])
            ids_here.append(rec["sample_id"])
            s.group.append(sys.intern(g))  # one string object per group / prompt, not per sample
            s.prompt.append(sys.intern(rec.get("prompt", "")))
            s.clip.append(float((rec.get("clip") or {}).get("score", float("nan"))))
            s.pixel.append((rec.get("image") or {}).get("pixel_sha256", ""))
            s.shard.append(sh.no)
        if sh.emb:
            t = read_parquet(store, sh.emb, ["sample_id", "image_emb", "text_emb"])
            if t.column("sample_id").to_pylist() != ids_here:
                raise ReportError(f"{sh.emb}: rows do not line up with shard {sh.no}")
            embs_i.append(emb_matrix(t.column("image_emb")))
            if "text_emb" in t.column_names:
                embs_t.append(emb_matrix(t.column("text_emb")))
    if embs_i and sum(len(e) for e in embs_i) == len(s.ids):
        s.img_emb = np.concatenate(embs_i)
        if embs_t and sum(len(e) for e in embs_t) == len(s.ids):
            s.txt_emb = np.concatenate(embs_t)
    return Dataset(store, index, provenance, shards, s, read_parts(store, index, DECISIONS),
                   read_parts(store, index, TIMINGS), read_parquet(store, "manifest.parquet"),
                   read_json(store, "curation.json"), group_attrs)


def prompt_groups(ds: Dataset) -> dict[str, str]:
    """prompt_id -> prompt group, from the manifest (covers prompts none of whose samples were published)."""
    if ds.manifest is None or "prompt_id" not in ds.manifest.column_names:
        return {}
    attrs = ds.manifest.column("attributes").to_pylist() if "attributes" in ds.manifest.column_names else \
        [None] * ds.manifest.num_rows
    return {p: group_key(a) for p, a in zip(ds.manifest.column("prompt_id").to_pylist(), attrs)}


# ============================================================================ decisions (defensive)


def _flatten_columns(t: pa.Table) -> dict[str, list[Any]]:
    """Extra decision columns flattened one level (struct fields, map keys) to python lists."""
    out: dict[str, list[Any]] = {}
    for name in t.column_names:
        if name in KNOWN_DECISION_COLUMNS:
            continue
        col = t.column(name)
        typ = col.type
        if pa.types.is_struct(typ):
            for i in range(typ.num_fields):
                sub = pa.chunked_array([c.field(i) for c in col.chunks], typ.field(i).type)
                out[f"{name}.{typ.field(i).name}"] = sub.to_pylist()
        elif pa.types.is_map(typ):
            vals = col.to_pylist()
            keys = sorted({k for v in vals if v for k, _ in v})
            for k in keys:
                out[f"{name}.{k}"] = [dict(v).get(k) if v else None for v in vals]
        elif pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_binary(typ):
            continue
        else:
            out[name] = col.to_pylist()
    return out


@dataclass
class DecisionView:
    sample_ids: list[str]
    prompt_ids: list[str]
    kept: list[bool]
    reasons: list[list[str]]  # why a sample was not kept
    flag_lists: list[list[str]]  # findings on samples kept with a flag (the ``flags`` column)
    clip: list[float | None]
    scores: dict[str, list[float | None]]  # numeric extra columns
    labels: dict[str, list[str | None]]  # string extra columns that look like perceived attributes
    flags: dict[str, list[bool | None]]  # boolean extra columns


def decision_view(t: pa.Table | None) -> DecisionView | None:
    if t is None or "sample_id" not in t.column_names:
        return None
    n = t.num_rows

    def get(c: str, d: Any) -> list[Any]:
        return t.column(c).to_pylist() if c in t.column_names else [d] * n

    scores, labels, flags = {}, {}, {}
    for name, vals in _flatten_columns(t).items():
        present = not_none(vals)
        if present and all(isinstance(v, bool) for v in present):
            flags[name] = vals
        elif present and all(isinstance(v, (int, float)) for v in present):
            scores[name] = [None if v is None else float(v) for v in vals]
        elif present and all(isinstance(v, str) for v in present) and _ATTR.search(name):
            labels[name] = vals
    reasons = [list(r or []) for r in get("reasons", [])]
    flag_lists = [list(f or []) if isinstance(f, list) else [] for f in get("flags", [])]
    return DecisionView(get("sample_id", None), get("prompt_id", ""), [bool(k) for k in get("kept", True)],
                        reasons, flag_lists, get("clip_score", None), scores, labels, flags)


def decision_groups(ds: Dataset, dv: DecisionView, idx_of: dict[str, int]) -> list[str | None]:
    """The prompt group of every decisions row: its published sample's, else its prompt's (None: unknown)."""
    pg = prompt_groups(ds)
    return [ds.samples.group[idx_of[sid]] if sid in idx_of else pg.get(pid)
            for sid, pid in zip(dv.sample_ids, dv.prompt_ids)]


def attr_name(column: str) -> str:
    """'attr_colour' / 'perceived.colour' / 'zero_shot_colour' -> 'colour'."""
    name = column.rsplit(".", 1)[-1]
    return re.sub(r"^(attr(ibute)?s?|perceived|zero_?shot|zs)[_.-]?", "", name, flags=re.I) or name
