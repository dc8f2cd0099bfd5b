"""External sets a run is compared with: earlier published datasets and protected reference sets.

An external set is loaded once into memory as ids + (optional) pixel hashes, pHash codes and
normalised CLIP image embeddings; matching is by the same tests as within-run dedup:

- earlier datasets (``curation.prior_datasets``): a synthgen dataset root (``index.json`` is
  required, so a half-written dataset is never used); hashes from its decisions (kept
  rows), embeddings from ``embeddings/*.parquet``;
- reference sets (``curation.references``): a folder of images (embedded here with the job's CLIP:
  one pass over the *reference* images, never over generated ones), embeddings in Parquet
  (``image_emb`` / ``embedding`` column, optional ``id``) or ``.npy``, or a synthgen dataset root.

Nearest neighbours: faiss ``IndexFlatIP`` (top-1 cosine) and ``IndexBinaryFlat`` (nearest pHash).
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contracts.decisions import DECISIONS, read_table
from pipelines.curation.dedup.hashes import perceptual_hash, phash_codes
from pipelines.curation.rowwise import faiss_rowwise
from pipelines.errors import SpecError
from pipelines.io.store import url_to_fs

if TYPE_CHECKING:
    from pipelines.embed.clip import ClipEmbedder

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
EMB_COLUMNS = ("image_emb", "embedding", "emb")
ID_COLUMNS = ("id", "sample_id", "path", "key")
#: Histogram edges for top-1 similarities (cosine), recorded for every reference set.
HIST_EDGES = np.round(np.linspace(-1.0, 1.0, 41), 3)


@dataclass
class ExternalSet:
    name: str
    source: str
    kind: str  # "dataset" | "images" | "embeddings"
    ids: list[str]
    emb: np.ndarray | None = None  # (m, d) float32, L2-normalised
    sha: list[str | None] | None = None
    phash: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _read_table(fs: Any, path: str, columns: list[str] | None = None) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def load_dataset(url: str, storage_options: dict[str, Any] | None = None, name: str | None = None) -> ExternalSet:
    """Kept samples of a published synthgen dataset."""
    fs, root = url_to_fs(url, storage_options)
    index_path = posixpath.join(root, "index.json")
    if not fs.exists(index_path):
        raise SpecError(f"{url}: no index.json: not a published synthgen dataset")
    index = json.loads(fs.cat_file(index_path))
    emb_rows: dict[str, list[float]] = {}
    for shard in index.get("shards", []):
        for key in shard.get("files", {}):
            if key.startswith("embeddings/"):
                t = _read_table(fs, posixpath.join(root, key), ["sample_id", "image_emb"])
                emb_rows.update(zip(t.column("sample_id").to_pylist(), t.column("image_emb").to_pylist()))
    sha: dict[str, str | None] = {}
    ph: dict[str, str | None] = {}
    dec = read_table(fs, root, index, DECISIONS, ["sample_id", "kept", "pixel_sha256", "phash"])
    if dec is not None:
        cols = dec.column_names
        for r in dec.to_pylist():
            if r.get("kept"):
                sha[r["sample_id"]] = r.get("pixel_sha256") if "pixel_sha256" in cols else None
                ph[r["sample_id"]] = r.get("phash") if "phash" in cols else None
    ids = sorted(emb_rows) if emb_rows else sorted(sha)
    emb = _normalised(np.array([emb_rows[i] for i in ids], np.float32)) if emb_rows else None
    return ExternalSet(name or index.get("job", {}).get("name", url), url, "dataset", ids, emb,
                       [sha.get(i) for i in ids], [ph.get(i) for i in ids])


def _embeddings_from_table(t: pa.Table, source: str, name: str) -> ExternalSet | None:
    col = next((c for c in EMB_COLUMNS if c in t.column_names), None)
    if col is None:
        return None
    idc = next((c for c in ID_COLUMNS if c in t.column_names), None)
    ids = [str(v) for v in t.column(idc).to_pylist()] if idc else [str(i) for i in range(t.num_rows)]
    emb = np.array(t.column(col).to_pylist(), np.float32)
    return ExternalSet(name, source, "embeddings", ids, _normalised(emb.reshape(len(ids), -1)))


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    return np.asarray(im.convert("RGB"))


def _from_images(name: str, source: str, ids: list[str], images: list[np.ndarray],
                 embedder: "ClipEmbedder | None") -> ExternalSet:
    from PIL import Image

    from pipelines.generate.encode import pixel_sha256

    emb = None
    if embedder is not None and images:
        emb = _normalised(embedder.image_embeddings([Image.fromarray(im) for im in images]))
    return ExternalSet(name, source, "images", ids, emb, [pixel_sha256(im) for im in images],
                       [perceptual_hash(im) for im in images])


def load_reference(name: str, url: str, storage_options: dict[str, Any] | None = None,
                   embedder: "ClipEmbedder | None" = None) -> ExternalSet:
    """A protected reference set from a folder of images, an embeddings file, or a dataset root."""
    fs, root = url_to_fs(url, storage_options)
    if not fs.exists(root):
        raise SpecError(f"{url}: reference set '{name}' not found")
    if fs.isdir(root) and fs.exists(posixpath.join(root, "index.json")):
        ds = load_dataset(url, storage_options, name)
        ds.kind = "dataset"
        return ds
    files = sorted(fs.find(root)) if fs.isdir(root) else [root]
    if root.endswith(".npy"):
        with fs.open(root, "rb") as f:
            arr = np.load(f, allow_pickle=False)
        return ExternalSet(name, url, "embeddings", [str(i) for i in range(len(arr))], _normalised(arr))
    parquet = [f for f in files if f.endswith(".parquet")]
    if parquet:
        t = pa.concat_tables([_read_table(fs, f) for f in parquet], promote_options="default")
        found = _embeddings_from_table(t, url, name)
        if found is not None:
            return found
        img_col = next((c for c in ("png", "image", "jpg") if c in t.column_names), None)
        if img_col is None:
            raise SpecError(f"{url}: reference Parquet has no embedding column {EMB_COLUMNS} and no image column")
        idc = next((c for c in ID_COLUMNS if c in t.column_names), None)
        ids = [str(v) for v in t.column(idc).to_pylist()] if idc else [str(i) for i in range(t.num_rows)]
        return _from_images(name, url, ids, [_decode(b) for b in t.column(img_col).to_pylist()], embedder)
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
        raise SpecError(f"{url}: reference set '{name}' holds no images, Parquet or .npy embeddings")
    ids = [posixpath.relpath(f, root) if f != root else posixpath.basename(f) for f in images]
    return _from_images(name, url, ids, [_decode(fs.cat_file(f)) for f in images], embedder)


# ------------------------------------------------------------------------------------- matching
def top1_cosine(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 cosine, index into ref) of every query row (normalised inputs); exact search."""
    import faiss

    n = len(query)
    if n == 0 or ref is None or len(ref) == 0:
        return np.full(n, np.nan, np.float32), np.full(n, -1, np.int64)
    if query.shape[1] != ref.shape[1]:
        raise SpecError(f"embedding sizes differ: samples {query.shape[1]}, reference {ref.shape[1]} "
                        "(the reference set was embedded with another CLIP model)")
    index = faiss.IndexFlatIP(ref.shape[1])
    index.add(np.ascontiguousarray(ref, np.float32))
    with faiss_rowwise():
        sim, idx = index.search(np.ascontiguousarray(query, np.float32), 1)
    return sim[:, 0].astype(np.float32), idx[:, 0].astype(np.int64)


def nearest_phash(query: list[str | None], ref: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(Hamming distance, index into ref) of the nearest reference pHash; -1 where unknown."""
    import faiss

    n = len(query)
    dist = np.full(n, -1, np.int64)
    idx = np.full(n, -1, np.int64)
    rmask = np.array([h is not None for h in ref], bool)
    qmask = np.array([h is not None for h in query], bool)
    if not rmask.any() or not qmask.any():
        return dist, idx
    ref_ids = np.flatnonzero(rmask)
    index = faiss.IndexBinaryFlat(64)
    index.add(phash_codes([ref[i] for i in ref_ids]))
    d, i = index.search(phash_codes([query[k] for k in np.flatnonzero(qmask)]), 1)
    dist[qmask], idx[qmask] = d[:, 0], ref_ids[i[:, 0]]
    return dist, idx


def exact_match(query: list[str | None], ref: list[str | None]) -> np.ndarray:
    """Index into ref of an identical pixel hash, -1 if none."""
    where = {h: k for k, h in reversed(list(enumerate(ref))) if h}
    return np.array([where.get(h, -1) if h else -1 for h in query], np.int64)


def histogram(values: np.ndarray) -> dict[str, list[float] | list[int]]:
    v = values[~np.isnan(values)]
    counts, _ = np.histogram(np.clip(v, -1.0, 1.0), bins=HIST_EDGES)
    return {"edges": HIST_EDGES.tolist(), "counts": counts.astype(int).tolist()}
