"""Work-unit tables: their schema, their wire form between Ray stages, and their staged objects.

A unit travels between stages as one Arrow IPC buffer (one Ray row), so a unit is never split
or merged by Ray Data's batching; it is staged as one Parquet object at
``<out>/_staging/<fingerprint>/units/<unit_id>.parquet``, written whole before it counts.

Between stages a unit changes form: decoded input images (``INPUT_SCHEMA``, CPU fetch stage) ->
raw pixels (``PIXEL_SCHEMA``, what the generator actor returns: uint8 HxWxC bytes, no encoding)
-> PNGs with hashes and embeddings (``GEN_SCHEMA`` + ``EMBED_FIELDS``, staged).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contracts.manifest import SAMPLE_FIELDS
from pipelines.io.store import Store

GEN_SCHEMA = pa.schema(
    SAMPLE_FIELDS
    + [
        ("png", pa.binary()),
        ("pixel_sha256", pa.string()),
        ("phash", pa.string()),  # 64-bit perceptual hash (imagehash.phash) as 16 hex digits
        ("gen_ms", pa.float64()),
        ("gen_worker", pa.string()),
        ("error", pa.string()),  # set (and png null) when this sample's generation raised
    ]
)
#: What the generator actor returns: raw uint8 pixels (row-major HxWxC bytes) and their shape.
PIXEL_SCHEMA = pa.schema(
    SAMPLE_FIELDS
    + [
        ("pixels", pa.large_binary()),
        ("pixels_shape", pa.list_(pa.int32(), 3)),
        ("gen_ms", pa.float64()),
        ("gen_worker", pa.string()),
        ("error", pa.string()),
    ]
)
#: Input images of a unit's samples, fetched and decoded on the CPU before the generator: RGB
#: uint8 at the sample's size (null where the sample has none); ``input_error`` when unreadable.
#: A named region or outpainting arrives here as an ordinary pair: ``mask_pixels`` made from the
#: region, or ``init_pixels`` the padded canvas and ``mask_pixels`` its padding.
INPUT_SCHEMA = pa.schema(
    [("sample_id", pa.string())]
    + [(f"{k}_pixels", pa.large_binary()) for k in ("init", "mask", "style")]
    + [("input_error", pa.string())]
)
EMBED_FIELDS = [
    ("clip_score", pa.float32()),
    ("image_emb", pa.list_(pa.float32())),
    ("text_emb", pa.list_(pa.float32())),
    ("clip_ms", pa.float64()),
]
#: Columns curation reads: everything but the image bytes and the inputs (publish reads those).
INPUT_COLUMNS = ("init_image", "mask_image", "style_image", "mask_region", "outpaint")
LIGHT_COLUMNS = [f.name for f in GEN_SCHEMA if f.name != "png" and f.name not in INPUT_COLUMNS] + [
    n for n, _ in EMBED_FIELDS]


def pixels_to_bytes(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def pixels_from_bytes(buf: bytes, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """Read-only view of the buffer (no copy): the consumers only read pixels."""
    return np.frombuffer(buf, dtype=np.uint8).reshape(tuple(shape))


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(buf: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(buf)).read_all()


def with_meta(table: pa.Table, key: str, value: dict[str, Any]) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta[key.encode()] = json.dumps(value, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


def meta(table_or_schema: pa.Table | pa.Schema, key: str) -> dict[str, Any]:
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    return json.loads((schema.metadata or {})[key.encode()])


class Staging:
    """The staged units of one job fingerprint under a dataset root."""

    def __init__(self, store: Store, fingerprint: str):
        self.store = store
        self.prefix = f"_staging/{fingerprint}"

    def unit_key(self, unit_id: str) -> str:
        return f"{self.prefix}/units/{unit_id}.parquet"

    def failed_key(self, unit_id: str) -> str:
        return f"{self.prefix}/failed/{unit_id}.json"

    def write_unit(self, unit_id: str, table: pa.Table) -> int:
        """A unit with failed samples gets a marker, written before it, so it never counts as done
        and a rerun regenerates it (filling the holes); a complete unit clears any marker after."""
        errors = [e for e in table.column("error").to_pylist() if e] if "error" in table.column_names else []
        if errors:
            self.store.write_bytes(self.failed_key(unit_id), json.dumps({"failed": len(errors)}).encode())
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.store.write_bytes(self.unit_key(unit_id), buf.getvalue())
        if not errors and self.store.exists(self.failed_key(unit_id)):
            self.store.delete(self.failed_key(unit_id))
        return buf.tell()

    def staged_ids(self) -> set[str]:
        """Units staged whole and without failed samples (those are regenerated on a rerun)."""
        keys = self.store.list(f"{self.prefix}/units")
        done = {k.rsplit("/", 1)[1].removesuffix(".parquet") for k in keys if k.endswith(".parquet")}
        failed = {k.rsplit("/", 1)[1].removesuffix(".json") for k in self.store.list(f"{self.prefix}/failed")
                  if k.endswith(".json")}
        return done - failed

    def read_unit(self, unit_id: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(self.store.read_bytes(self.unit_key(unit_id))), columns=columns)

    def clear(self) -> None:
        self.store.delete_prefix(self.prefix)
