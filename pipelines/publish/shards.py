"""Publish kept samples as size-bounded shards, then metadata, then ``index.json`` last.

Each shard is built in memory (on a worker: ``pipelines/execution/publish_plan.py``) and written as
one object (``Store.write_bytes``). webdataset's ``ShardWriter`` could stream to any URL its ``gopen``
can pipe (``pipe:aws s3 cp - s3://...``, ``gs://``, curl uploads) or through an ``opener`` such as
``fsspec.open``; we do not stream because a shard must appear whole or not at all: one PUT is atomic on
an object store (temp file + rename on local disk), a transient failure is retried by re-sending the
whole object (a half-streamed upload cannot be resumed), and the sha256 and size recorded in
``index.json`` are those of the very bytes written. Memory per shard is bounded by ``shard_max_bytes``.
Shard boundaries come from ``plan_shards``.
The same samples go to shard ``n`` of every format: ``shards/<name>-<n>.tar`` (webdataset:
``<key>.png``, ``<key>.json``, ``<key>.txt``), ``shards/<name>-<n>.parquet`` (image bytes + record)
and ``embeddings/<n>.parquet`` (CLIP embeddings, referenced from each record).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from pipelines.io.store import Store

INDEX = "index.json"
TAR_MTIME = 0.0  # fixed tar header times: the same samples give byte-identical shards

SHARD_SCHEMA = pa.schema([("sample_id", pa.string()), ("png", pa.binary()), ("prompt", pa.string()),
                          ("record", pa.string())])
EMB_SCHEMA = pa.schema([("sample_id", pa.string()), ("image_emb", pa.list_(pa.float32())),
                        ("text_emb", pa.list_(pa.float32()))])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    return buf.getvalue()


def plan_shards(sizes: list[int], max_samples: int, max_bytes: int) -> list[tuple[int, int]]:
    """Shard boundaries ``[start, end)`` over the kept samples in order, from their sizes (PNG bytes +
    2048): a shard closes at ``max_samples`` samples or once it reaches ``max_bytes``."""
    out, start, acc = [], 0, 0
    for k, size in enumerate(sizes):
        acc += size
        if k + 1 - start >= max_samples or acc >= max_bytes:
            out.append((start, k + 1))
            start, acc = k + 1, 0
    if start < len(sizes):
        out.append((start, len(sizes)))
    return out


def shard_row(sample_id: str, png: bytes, prompt: str, record: dict[str, Any], image_emb: list[float],
              text_emb: list[float]) -> dict[str, Any]:
    return {"sample_id": sample_id, "png": png, "prompt": prompt, "record": json.dumps(record, sort_keys=True),
            "image_emb": image_emb, "text_emb": text_emb}


def write_shard(store: Store, name: str, formats: list[str], n: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write shard ``n`` of every format, each object whole; return its index entry."""
    entry: dict[str, Any] = {"shard": n, "count": len(rows), "first": rows[0]["sample_id"],
                             "last": rows[-1]["sample_id"], "files": {}}
    objects: dict[str, bytes] = {}
    if "webdataset" in formats:
        buf = io.BytesIO()
        with wds.TarWriter(buf, mtime=TAR_MTIME, encoder=False) as tw:
            for r in rows:
                tw.write({"__key__": r["sample_id"], "png": r["png"], "json": r["record"].encode(),
                          "txt": r["prompt"].encode()})
        objects[f"shards/{name}-{n:06d}.tar"] = buf.getvalue()
    if "parquet" in formats:
        objects[f"shards/{name}-{n:06d}.parquet"] = _parquet_bytes(rows, SHARD_SCHEMA)
    objects[f"embeddings/{n:06d}.parquet"] = _parquet_bytes(rows, EMB_SCHEMA)
    if "dicom" in formats:
        objects |= dicom_objects(rows)
    for key, data in objects.items():
        store.write_bytes(key, data)
        entry["files"][key] = {"sha256": sha256(data), "bytes": len(data)}
    return entry


def dicom_objects(rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """One DICOM file per sample of a shard (``pipelines.publish.dicom``), from its published PNG and record:
    listed in the shard's index entry like any shard file, so ``verify`` checks each one."""
    from PIL import Image

    from pipelines import __version__
    from pipelines.publish.dicom import DicomContext, dicom_bytes, dicom_key, series_number

    out: dict[str, bytes] = {}
    for r in rows:
        rec = json.loads(r["record"])
        ctx = DicomContext(rec["job"]["fingerprint"], rec["job"]["name"], __version__)
        pixels = np.asarray(Image.open(io.BytesIO(r["png"])))
        out[dicom_key(rec)] = dicom_bytes(pixels, rec, ctx, series_number(rec["prompt_id"]))
    return out


def embedding_ref(n: int, row: int) -> dict[str, Any]:
    """Where a published sample's embedding lives: row ``row`` of shard ``n``'s embeddings file."""
    return {"file": f"embeddings/{n:06d}.parquet", "row": row}


@dataclass
class ShardWriter:
    """Rolls shards by sample count and (tar) bytes in one process (as ``plan_shards`` cuts them)."""

    store: Store
    name: str
    formats: list[str]
    max_samples: int
    max_bytes: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    _rows: list[dict[str, Any]] = field(default_factory=list)
    _bytes: int = 0

    def embedding_ref(self) -> dict[str, Any]:
        """Where the next added sample's embedding will live."""
        return embedding_ref(len(self.shards), len(self._rows))

    def add(self, sample_id: str, png: bytes, prompt: str, record: dict[str, Any],
            image_emb: list[float], text_emb: list[float]) -> None:
        self._rows.append(shard_row(sample_id, png, prompt, record, image_emb, text_emb))
        self._bytes += len(png) + 2048
        if len(self._rows) >= self.max_samples or self._bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self.shards.append(write_shard(self.store, self.name, self.formats, len(self.shards), self._rows))
        self._rows, self._bytes = [], 0


def write_json(store: Store, key: str, obj: Any) -> dict[str, Any]:
    data = (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode()
    store.write_bytes(key, data)
    return {"sha256": sha256(data), "bytes": len(data)}


def write_parquet(store: Store, key: str, table: pa.Table) -> dict[str, Any]:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    store.write_bytes(key, buf.getvalue())
    return {"sha256": sha256(buf.getvalue()), "bytes": buf.tell()}


def write_index(store: Store, *, job: dict[str, str], shards: list[dict[str, Any]],
                files: dict[str, dict[str, Any]], counts: dict[str, int]) -> None:
    """Written last: a dataset without a valid index is absent to readers."""
    write_json(store, INDEX, {"format": "synthgen-dataset", "version": 1, "job": job, "counts": counts,
                              "shards": shards, "files": files})


def read_index(store: Store) -> dict[str, Any] | None:
    if not store.exists(INDEX):
        return None
    try:
        return json.loads(store.read_bytes(INDEX))
    except json.JSONDecodeError:
        return None
