"""External sets a run is compared with: earlier published datasets and protected reference sets.

The one loader of such sets: curation matches against them, the audit report
(:mod:`pipelines.report.reference`) measures distances to one, so both read the same formats the same
way. An external set is loaded once into memory as ids + (optional) pixel hashes, pHash codes and
normalised CLIP image embeddings, plus where each row's image can be fetched again (the report shows
the closest pairs); matching is by the same tests as within-run dedup:

- earlier datasets (``curation.prior_datasets``): a synthgen dataset root (``index.json`` is
  required, so a half-written dataset is never used); hashes from its decisions (kept
  rows), embeddings from ``embeddings/*.parquet``;
- reference sets (``curation.references``, ``synthgen report --reference``): a folder of images
  (embedded here with the job's CLIP: one pass over the *reference* images, never over generated
  ones), embeddings in Parquet (``image_emb`` / ``embedding`` column, optional ``id``, optional
  image column, the embedding CLIP in the ``synthgen.clip`` schema metadata) or ``.npy``, Parquet
  with images only, or a synthgen dataset root.

Images are decoded, hashed and embedded a chunk at a time (whole embedder batches, so the numbers
are those of one call). Nearest neighbours: faiss ``IndexFlatIP`` (top-1 cosine) and
``IndexBinaryFlat`` (nearest pHash).
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.contracts.decisions import DECISIONS, read_table
from pipelines.curation.dedup.hashes import perceptual_hash, phash_codes
from pipelines.curation.rowwise import faiss_rowwise
from pipelines.curation.stats import subsample_indices
from pipelines.errors import SpecError
from pipelines.io.store import url_to_fs

if TYPE_CHECKING:
    from pipelines.embed.clip import ClipEmbedder

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
EMB_COLUMNS = ("image_emb", "embedding", "emb")
ID_COLUMNS = ("id", "sample_id", "path", "key")
IMAGE_COLUMNS = ("png", "image", "jpg")
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
    clip: dict[str, Any] | None = None  # the CLIP that embedded it, where the set says
    files: list[str] = field(default_factory=list)  # paths (on the set's filesystem) holding its images
    file_of: np.ndarray | None = None  # per row: index into files, -1 where no image is known
    row_of: np.ndarray | None = None  # per row: row in a Parquet file with an image column; -1: by id / whole file

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> "ExternalSet":
        """The rows ``rows`` (in that order) of this set."""
        pick = (lambda v: None if v is None else [v[i] for i in rows])
        arr = (lambda v: None if v is None else v[rows])
        return replace(self, ids=[self.ids[i] for i in rows], emb=arr(self.emb), sha=pick(self.sha),
                       phash=pick(self.phash), file_of=arr(self.file_of), row_of=arr(self.row_of))


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _matrix(col: pa.ChunkedArray) -> np.ndarray:
    """An embedding column (list of floats per row) as an (n, d) float32 matrix."""
    typ = col.type
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        arr = col.combine_chunks()
        if arr.null_count == 0 and len(arr):
            flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            return flat.reshape(len(arr), -1)
    return np.array(col.to_pylist(), np.float32).reshape(len(col), -1)


def _read_table(fs: Any, path: str, columns: list[str] | None = None) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def _read_schema(fs: Any, path: str) -> pa.Schema:
    with fs.open(path, "rb") as f:
        return pq.read_schema(f)


def _resolve(embedder: Any) -> "ClipEmbedder | None":
    return embedder() if callable(embedder) else embedder


def load_dataset(url: str, storage_options: dict[str, Any] | None = None, name: str | None = None) -> ExternalSet:
    """Kept samples of a published synthgen dataset, in sample-id order."""
    fs, root = url_to_fs(url, storage_options)
    index_path = posixpath.join(root, "index.json")
    if not fs.exists(index_path):
        raise SpecError(f"{url}: no index.json: not a published synthgen dataset")
    index = json.loads(fs.cat_file(index_path))
    ids: list[str] = []
    mats, file_of, files = [], [], []
    for shard in index.get("shards", []):
        keys = list(shard.get("files", {}))
        image = next((k for k in keys if k.startswith("shards/") and k.endswith(".parquet")),
                     next((k for k in keys if k.startswith("shards/") and k.endswith(".tar")), None))
        for key in keys:
            if key.startswith("embeddings/"):
                t = _read_table(fs, posixpath.join(root, key), ["sample_id", "image_emb"])
                ids += t.column("sample_id").to_pylist()
                mats.append(_matrix(t.column("image_emb")))
                file_of.append(np.full(t.num_rows, len(files) if image else -1, np.int32))
                if image:
                    files.append(posixpath.join(root, image))
    sha: dict[str, str | None] = {}
    ph: dict[str, str | None] = {}
    dec = read_table(fs, root, index, DECISIONS, ["sample_id", "kept", "pixel_sha256", "phash"])
    if dec is not None and "kept" in dec.column_names:
        dec = dec.filter(pc.fill_null(dec.column("kept"), False))
        none = [None] * dec.num_rows
        sids = dec.column("sample_id").to_pylist()
        sha = dict(zip(sids, dec.column("pixel_sha256").to_pylist() if "pixel_sha256" in dec.column_names else none))
        ph = dict(zip(sids, dec.column("phash").to_pylist() if "phash" in dec.column_names else none))
    row_of_id = {sid: i for i, sid in enumerate(ids)}  # a sample listed twice: its last row, as a dict would
    order = sorted(row_of_id) if row_of_id else sorted(sha)
    emb = loc = None
    if row_of_id:
        rows = np.array([row_of_id[i] for i in order], np.int64)
        emb, loc = _normalised(np.concatenate(mats)[rows]), np.concatenate(file_of)[rows]
    prov_path = posixpath.join(root, "provenance.json")
    clip = ((json.loads(fs.cat_file(prov_path)).get("models") or {}).get("clip")
            if fs.exists(prov_path) else None)
    return ExternalSet(name or index.get("job", {}).get("name", url), url, "dataset", order, emb,
                       [sha.get(i) for i in order], [ph.get(i) for i in order], clip, files, loc,
                       None if loc is None else np.full(len(order), -1, np.int32))


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    return np.asarray(im.convert("RGB"))


def _from_images(name: str, source: str, ids: list[str], read: Callable[[int], bytes], embedder: Any,
                 hashes: bool, **where: Any) -> ExternalSet:
    """Images read one chunk at a time (``read(row)``: the encoded bytes): hashes and embeddings."""
    from PIL import Image

    from pipelines.generate.encode import pixel_sha256

    model = _resolve(embedder) if ids else None
    chunk = model.batch_size * max(1, 256 // model.batch_size) if model is not None else 256
    embs, sha, ph = [], [], []
    for start in range(0, len(ids), chunk):
        images = [_decode(read(i)) for i in range(start, min(start + chunk, len(ids)))]
        if hashes:
            sha += [pixel_sha256(im) for im in images]
            ph += [perceptual_hash(im) for im in images]
        if model is not None:
            embs.append(model.image_embeddings([Image.fromarray(im) for im in images]))
    emb = _normalised(np.concatenate(embs)) if embs else None
    return ExternalSet(name, source, "images", ids, emb, sha if hashes else None, ph if hashes else None,
                       model.info if model is not None else None, **where)


def _subset(n: int, max_rows: int | None, seed: int) -> np.ndarray | None:
    return None if max_rows is None or n <= max_rows else subsample_indices(n, max_rows, seed)


def _parquet_set(name: str, url: str, fs: Any, paths: list[str], embedder: Any, hashes: bool,
                 max_rows: int | None, seed: int) -> ExternalSet:
    """Embeddings (and where they are, images) from Parquet files: only the columns used are read."""
    schemas = [_read_schema(fs, p) for p in paths]
    names = {c for s in schemas for c in s.names}
    emb_col = next((c for c in EMB_COLUMNS if c in names), None)
    id_col = next((c for c in ID_COLUMNS if c in names), None)
    img_col = next((c for c in IMAGE_COLUMNS if c in names), None)
    if emb_col is None and img_col is None:
        raise SpecError(f"{url}: reference Parquet has no embedding column {EMB_COLUMNS} and no image column")
    clip = next((json.loads(s.metadata[b"synthgen.clip"]) for s in schemas if b"synthgen.clip" in (s.metadata or {})),
                None)
    want = [c for c in (id_col, emb_col or img_col) if c]
    tables = [_read_table(fs, p, [c for c in want if c in s.names]) for p, s in zip(paths, schemas)]
    t = pa.concat_tables(tables, promote_options="default")
    ids = [str(v) for v in t.column(id_col).to_pylist()] if id_col else [str(i) for i in range(t.num_rows)]
    with_img = [img_col is not None and img_col in s.names for s in schemas]
    file_of = np.concatenate([np.full(len(tb), i if ok else -1, np.int32)
                              for i, (tb, ok) in enumerate(zip(tables, with_img))]) if tables else None
    row_of = np.concatenate([np.arange(len(tb), dtype=np.int32) for tb in tables]) if tables else None
    sel = _subset(len(ids), max_rows, seed)
    if emb_col is not None:
        out = ExternalSet(name, url, "embeddings", ids, _normalised(_matrix(t.column(emb_col)).reshape(len(ids), -1)),
                          clip=clip, files=list(paths), file_of=file_of, row_of=row_of)
        return out if sel is None else out.take(sel)
    rows = np.arange(len(ids)) if sel is None else sel
    blobs = t.column(img_col)
    return _from_images(name, url, [ids[i] for i in rows], lambda k: blobs[int(rows[k])].as_py(), embedder, hashes,
                        files=list(paths), file_of=file_of[rows], row_of=row_of[rows])


def load_reference(name: str, url: str, storage_options: dict[str, Any] | None = None,
                   embedder: "ClipEmbedder | Callable[[], ClipEmbedder] | None" = None, *,
                   max_rows: int | None = None, seed: int = 0, hashes: bool = True) -> ExternalSet:
    """A protected reference set from a folder of images, an embeddings file, or a dataset root.

    ``embedder`` (or a function making one, called only if images must be embedded) embeds images;
    ``max_rows``: at most this many rows, a seeded subset (images are subset before they are read);
    ``hashes``: pixel and perceptual hashes of image sets (curation matches on them, the report does not)."""
    fs, root = url_to_fs(url, storage_options)
    if not fs.exists(root):
        raise SpecError(f"{url}: reference set '{name}' not found")
    if fs.isdir(root) and fs.exists(posixpath.join(root, "index.json")):
        ds = load_dataset(url, storage_options, name)
        sel = _subset(len(ds), max_rows, seed)
        return ds if sel is None else ds.take(sel)
    files = sorted(fs.find(root)) if fs.isdir(root) else [root]
    if root.endswith(".npy"):
        with fs.open(root, "rb") as f:
            arr = np.load(f, allow_pickle=False)
        out = ExternalSet(name, url, "embeddings", [str(i) for i in range(len(arr))], _normalised(arr))
        sel = _subset(len(out), max_rows, seed)
        return out if sel is None else out.take(sel)
    parquet = [f for f in files if f.endswith(".parquet")]
    if parquet:
        return _parquet_set(name, url, fs, parquet, embedder, hashes, max_rows, seed)
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
        raise SpecError(f"{url}: reference set '{name}' holds no images, Parquet or .npy embeddings")
    sel = _subset(len(images), max_rows, seed)
    images = images if sel is None else [images[i] for i in sel]
    ids = [posixpath.relpath(f, root) if f != root else posixpath.basename(f) for f in images]
    return _from_images(name, url, ids, lambda k: fs.cat_file(images[k]), embedder, hashes, files=images,
                        file_of=np.arange(len(images), dtype=np.int32), row_of=np.full(len(images), -1, np.int32))


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
