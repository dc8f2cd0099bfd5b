"""Reading a published dataset for the audit report, through :class:`~pipelines.io.store.Store` so any fsspec
URL works, without holding anything per sample: the index's shards (Parquet or webdataset tar) one at a
time, the embeddings of one shard at a time, the decisions and timings parts a batch at a time, and a
defensive flattening of whatever extra columns curation wrote into decisions. Images stay in the shards
until :func:`read_pngs` fetches the few the report shows or judges."""

from __future__ import annotations

import io
import itertools
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contracts.decisions import DECISIONS, TIMINGS, parts
from pipelines.curation.groups import group_key  # the one group key (curation's)
from pipelines.io.retry import retry_call
from pipelines.io.store import Store
from pipelines.report.settings import BATCH_ROWS, SHARD_ROWS, ReportError

KNOWN_DECISION_COLUMNS = {"sample_id", "prompt_id", "kept", "reasons", "flags", "stage", "clip_score"}
# what an extra decisions column (or a rejection reason) is about, judged by its name
SAFETY = re.compile(r"safety|nsfw|unsafe|concept", re.I)
REFSIM = re.compile(r"(ref|reference|protected|memor).*(sim|top1|top_1|cos)|(sim|top1|top_1|cos).*(ref|protected)",
                    re.I)
DUPSIM = re.compile(r"dup|near|nn_sim|nn_cos|nn_distance|neighbo|prior_top1", re.I)
_ATTR = re.compile(r"attr|perceived|zero_shot|zeroshot|zs_", re.I)

__all__ = ["DUPSIM", "KNOWN_DECISION_COLUMNS", "REFSIM", "SAFETY", "Dataset", "Extra", "ShardFiles", "attr_name",
           "emb_matrix", "extra_columns", "group_key", "iter_batches", "iter_records", "load_dataset", "not_none",
           "iter_shard", "part_columns", "read_json", "read_parquet", "read_pngs"]


# ============================================================================ helpers


def not_none(values: Iterable[Any]) -> list[Any]:
    """The values that are present: nullable columns hold None where a sample has no value."""
    return [v for v in values if v is not None]


def read_json(store: Store, key: str) -> Any | None:
    if not store.exists(key):
        return None
    return json.loads(store.read_bytes(key))


def read_parquet(store: Store, key: str, columns: list[str] | None = None) -> pa.Table | None:
    """The table at ``key`` (None when absent); requested columns the file lacks are skipped. Only the
    columns asked for are read (a shard's images stay on the store when its records are read)."""
    if not store.exists(key):
        return None

    def read(pf: pq.ParquetFile) -> pa.Table:
        cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        return pf.read(columns=cols)

    def go() -> pa.Table:
        with store.fs.open(store.path(key), "rb") as f:
            return read(pq.ParquetFile(f))

    try:
        return retry_call(go, what=f"{store.url.rstrip('/')}/{key}", attempts=store.retries,
                          base_delay=store.retry_base_delay)
    except (pa.ArrowInvalid, OSError):
        # a ranged read cut short by a flaky store surfaces as a malformed file, which is not a transient
        # error class: read the object whole instead (the store's verified whole-object read and its retries)
        return read(pq.ParquetFile(io.BytesIO(store.read_bytes(key))))


def iter_batches(store: Store, keys: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The rows of a table written as parts (``decisions.parquet/part-*``, or an older single file), a batch
    at a time: memory is one part's bytes plus one batch, whatever the number of rows."""
    for key in keys:
        if not store.exists(key):
            continue
        pf = pq.ParquetFile(io.BytesIO(store.read_bytes(key)))  # whole-object read: the store's retries
        yield from pf.iter_batches(batch_size=batch_rows)


def part_columns(store: Store, keys: list[str]) -> set[str]:
    """Column names of the first part present (the parts of one table share a schema)."""
    for key in keys:
        if store.exists(key):
            return set(pq.ParquetFile(io.BytesIO(store.read_bytes(key))).schema_arrow.names)
    return set()


def emb_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float> column as an n x d float32 matrix."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(arr), -1)


def attr_name(column: str) -> str:
    """'attr_colour' / 'perceived.colour' / 'zero_shot_colour' -> 'colour'."""
    name = column.rsplit(".", 1)[-1]
    return re.sub(r"^(attr(ibute)?s?|perceived|zero_?shot|zs)[_.-]?", "", name, flags=re.I) or name


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
    with store.fs.open(store.path(key), "rb") as f, tarfile.open(fileobj=f, mode="r|") as tf:
        for member in tf:
            if not member.isfile():
                continue
            base, _, ext = member.name.rpartition("/")[2].partition(".")
            if ext in want:
                data = tf.extractfile(member)
                yield base, ext, data.read() if data else b""


def iter_records(store: Store, shard: ShardFiles) -> Iterator[dict[str, Any]]:
    """Sample records of one shard, in shard order (Parquet ``record`` column, else the tar's json), decoded
    as they are consumed."""
    if shard.parquet:
        t = read_parquet(store, shard.parquet, ["record"])
        for batch in t.to_batches(max_chunksize=1024):
            for r in batch.column(0).to_pylist():
                yield json.loads(r)
    elif shard.tar:
        for _, _, data in _iter_tar(store, shard.tar, {"json"}):
            yield json.loads(data)


def iter_shard(store: Store, shard: ShardFiles, rows: int = SHARD_ROWS
               ) -> Iterator[tuple[list[dict[str, Any]], np.ndarray | None, np.ndarray | None]]:
    """(records, image embeddings, text embeddings) of one shard, ``rows`` samples at a time, so a large shard
    is never decoded whole; embeddings are None where the shard has none published."""
    emb = read_parquet(store, shard.emb, ["sample_id", "image_emb", "text_emb"]) if shard.emb else None
    done = 0
    records = iter_records(store, shard)
    while recs := list(itertools.islice(records, rows)):
        img = txt = None
        if emb is not None:
            t = emb.slice(done, len(recs))
            if t.column("sample_id").to_pylist() != [r["sample_id"] for r in recs]:
                raise ReportError(f"{shard.emb}: rows do not line up with shard {shard.no}")
            img = emb_matrix(t.column("image_emb"))
            txt = emb_matrix(t.column("text_emb")) if "text_emb" in t.column_names else None
        done += len(recs)
        yield recs, img, txt
    if emb is not None and emb.num_rows != done:
        raise ReportError(f"{shard.emb}: rows do not line up with shard {shard.no}")


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
class Dataset:
    """What the report reads whole: the index, provenance, curation.json and the manifest's prompt groups
    (one entry per prompt, not per sample). Samples, decisions and timings are streamed."""

    store: Store
    index: dict[str, Any]
    provenance: dict[str, Any]
    shards: list[ShardFiles]
    curation: Any | None
    prompt_groups: dict[str, str] | None  # prompt_id -> group, from manifest.parquet (None: no manifest)

    @property
    def decision_keys(self) -> list[str]:
        return parts(self.index, DECISIONS)

    @property
    def timing_keys(self) -> list[str]:
        return parts(self.index, TIMINGS)


def load_dataset(store: Store, index: dict[str, Any] | None = None) -> Dataset:
    """The light parts of a published dataset; images, embeddings and per-sample tables stay where they are."""
    if index is None:
        index = read_json(store, "index.json")
        if index is None:
            raise ReportError(f"{store.url}: no index.json (not a published synthgen dataset, or not finished)")
    manifest = read_parquet(store, "manifest.parquet", ["prompt_id", "attributes"])
    groups = None
    if manifest is not None and "prompt_id" in manifest.column_names:
        attrs = manifest.column("attributes").to_pylist() if "attributes" in manifest.column_names else \
            [None] * manifest.num_rows
        groups = {p: group_key(a) for p, a in zip(manifest.column("prompt_id").to_pylist(), attrs)}
    return Dataset(store, index, read_json(store, "provenance.json") or {}, _shard_files(index),
                   read_json(store, "curation.json"), groups)


# ============================================================================ decisions (defensive)


@dataclass
class Extra:
    """One extra decisions column (a struct field or map key flattened to ``column.key``) in one batch:
    the rows where it has a value and those values. ``kind``: score (numbers), label (strings that name a
    perceived attribute) or flag (booleans)."""

    kind: str
    rows: np.ndarray
    values: np.ndarray | list[Any]


def _kind(name: str, typ: pa.DataType) -> str | None:
    if pa.types.is_boolean(typ):
        return "flag"
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "score"
    if (pa.types.is_string(typ) or pa.types.is_large_string(typ)) and _ATTR.search(name):
        return "label"
    return None


def _extra(name: str, arr: pa.Array, rows: np.ndarray | None = None) -> Extra | None:
    """The present values of one flat column (``rows``: the batch row of each entry, default its index)."""
    kind = _kind(name, arr.type)
    if kind is None:
        return None
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
    at = (np.arange(len(arr)) if rows is None else rows)[valid]
    present = arr.filter(pa.array(valid))
    if kind == "score":
        vals: Any = present.cast(pa.float64()).to_numpy(zero_copy_only=False)
    elif kind == "flag":
        vals = np.asarray(present.to_numpy(zero_copy_only=False), bool)
    else:
        vals = present.to_pylist()
    return Extra(kind, at, vals)


def _map_entries(name: str, col: pa.MapArray) -> dict[str, Extra]:
    """A map column as one column per key (``name.key``); a key given twice in one row: its last value."""
    import pyarrow.compute as pc

    as_list = col.cast(pa.list_(pa.struct([col.type.key_field, col.type.item_field])))
    entries = pc.list_flatten(as_list)  # key/value structs of the rows that have a map, in row order
    row_of = np.asarray(pc.list_parent_indices(as_list).to_numpy(zero_copy_only=False), np.int64)
    keys, items = entries.flatten()
    by_key: dict[str, list[int]] = {}
    for j, k in enumerate(keys.to_pylist()):
        by_key.setdefault(k, []).append(j)
    out: dict[str, Extra] = {}
    for k in sorted(by_key):
        js = np.asarray(by_key[k], np.int64)
        r = row_of[js]
        last = np.sort(len(r) - 1 - np.unique(r[::-1], return_index=True)[1])  # one entry per row: the last
        e = _extra(f"{name}.{k}", items.take(pa.array(js[last])), r[last])
        if e is not None:
            out[f"{name}.{k}"] = e
    return out


def extra_columns(batch: pa.RecordBatch) -> dict[str, Extra]:
    """Extra decision columns of one batch, flattened one level (struct fields, map keys); lists and
    binary columns are skipped. Only values that are present are returned."""
    out: dict[str, Extra] = {}
    for name, col in zip(batch.schema.names, batch.columns):
        if name in KNOWN_DECISION_COLUMNS:
            continue
        typ = col.type
        if pa.types.is_struct(typ):
            for i in range(typ.num_fields):
                e = _extra(f"{name}.{typ.field(i).name}", col.field(i))
                if e is not None:
                    out[f"{name}.{typ.field(i).name}"] = e
        elif pa.types.is_map(typ):
            out |= _map_entries(name, col)
        elif pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_binary(typ):
            continue
        else:
            e = _extra(name, col)
            if e is not None:
                out[name] = e
    return out
