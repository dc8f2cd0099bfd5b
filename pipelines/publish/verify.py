"""``synthgen verify URL``: check a published dataset against its index."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

import pyarrow.parquet as pq

from pipelines.contracts.decisions import DECISIONS, TIMINGS
from pipelines.publish.shards import INDEX
from pipelines.io.store import Store


def verify(url: str, storage_options: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Return (problems, index). A dataset without a valid index is absent."""
    store = Store(url, storage_options)
    if not store.exists(INDEX):
        return [f"{url}: no {INDEX}: not a published dataset (absent or half-written)"], {}
    try:
        index = json.loads(store.read_bytes(INDEX))
    except json.JSONDecodeError as e:
        return [f"{url}/{INDEX}: not valid JSON: {e}"], {}
    problems: list[str] = []
    listed: set[str] = set()
    total = 0
    for shard in index.get("shards", []):
        total += shard["count"]
        for key, meta in shard["files"].items():
            listed.add(key)
            data = _read(store, key, problems)
            if data is None:
                continue
            _check_hash(url, key, data, meta, problems)
            n = _count(key, data)
            if n is not None and n != shard["count"]:
                problems.append(f"{url}/{key}: {n} samples, index says {shard['count']}")
    for key, meta in index.get("files", {}).items():
        listed.add(key)
        data = _read(store, key, problems)
        if data is not None:
            _check_hash(url, key, data, meta, problems)
    if total != index.get("counts", {}).get("kept"):
        problems.append(f"{url}/{INDEX}: shards hold {total} samples, counts.kept is {index['counts'].get('kept')}")
    for key in [k for prefix in ("shards", "embeddings", DECISIONS, TIMINGS) for k in store.list(prefix)]:
        if key not in listed:
            problems.append(f"{url}/{key}: not in the index (stray file)")
    return problems, index


def _read(store: Store, key: str, problems: list[str]) -> bytes | None:
    try:
        return store.read_bytes(key)
    except FileNotFoundError:
        problems.append(f"{store.url}/{key}: missing")
        return None


def _check_hash(url: str, key: str, data: bytes, meta: dict[str, Any], problems: list[str]) -> None:
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        problems.append(f"{url}/{key}: sha256 mismatch")


def _count(key: str, data: bytes) -> int | None:
    if key.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            return len({m.name.split(".", 1)[0] for m in tf.getmembers()})
    if key.endswith(".parquet"):
        return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    return None
