"""Reference sets for the audit report and the metrics that compare a dataset with one.

A reference is a published synthgen dataset, Parquet with ``image_emb`` (+ optional ``png``,
``sample_id``), or a folder of images embedded here with the dataset's own CLIP; at most ``REF_MAX``
rows (deterministic subset). The section reports CMMD, FD and PRDC on deterministic subsets and the
top-1 cosine of every sample to the reference (memorisation), with the closest pairs for the HTML."""

from __future__ import annotations

import io
import json
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.report import metrics as M
from pipelines.report.data import (
    REFSIM,
    Dataset,
    DecisionView,
    ShardFiles,
    emb_matrix,
    load_dataset,
    not_none,
    read_parquet,
    read_pngs,
)
from pipelines.report.settings import CLOSEST_PAIRS, DIST_SAMPLE, FD_SAMPLE, MEMO_THRESHOLD, REF_MAX, SEED, ReportError
from pipelines.io.store import Store

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Reference:
    source: str
    kind: str  # synthgen-dataset | parquet | images
    ids: list[str]
    emb: np.ndarray
    clip: dict[str, Any] | None
    store: Store
    locator: list[tuple[str, int]]  # per row: (object key, row within it or -1 for a whole image file)
    shard_files: dict[str, ShardFiles] = field(default_factory=dict)

    def pngs(self, rows: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        by_key: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            by_key[self.locator[r][0]].append(r)
        for key, rs in sorted(by_key.items()):
            if self.kind == "images":
                for r in rs:
                    out[r] = self.store.read_bytes(key)
            elif self.kind == "synthgen-dataset":
                got = read_pngs(self.store, self.shard_files[key], {self.ids[r] for r in rs})
                out |= {r: got[self.ids[r]] for r in rs if self.ids[r] in got}
            else:
                t = read_parquet(self.store, key, ["png"])
                if t is not None and "png" in t.column_names:
                    out |= {r: t.column("png")[self.locator[r][1]].as_py() for r in rs}
        return out


def load_reference(url: str, storage_options: dict[str, Any] | None = None,
                   clip_spec: dict[str, Any] | None = None) -> Reference:
    """A reference set: a published synthgen dataset, Parquet with ``image_emb`` (+ optional ``png``,
    ``sample_id``), or a folder of images (embedded here with the dataset's CLIP, ``clip_spec``)."""
    if url.endswith(".parquet"):
        root, _, name = url.rpartition("/")
        store, keys = Store(root or ".", storage_options), [name]
    else:
        store = Store(url, storage_options)
        if store.exists("index.json"):
            return _dataset_reference(url, store)
        try:
            listed = sorted(posixpath.relpath(f, store.root) for f in store.fs.find(store.root))
        except FileNotFoundError:
            listed = []
        keys = [k for k in listed if k.endswith(".parquet")]
        if not keys:
            images = [k for k in listed if k.lower().endswith(IMAGE_EXT)]
            if not images:
                raise ReportError(f"reference {url}: no index.json, Parquet files or images found")
            return _embed_image_folder(url, store, images, clip_spec)
    return _parquet_reference(url, store, keys)


def _dataset_reference(url: str, store: Store) -> Reference:
    ds = load_dataset(store)
    if ds.samples.img_emb is None:
        raise ReportError(f"reference {url}: dataset has no embeddings")
    sf = {f"shard-{sh.no}": sh for sh in ds.shards}
    loc = [(f"shard-{n}", -1) for n in ds.samples.shard]
    sel = M.subsample_indices(len(ds.samples.ids), REF_MAX, SEED)
    return Reference(url, "synthgen-dataset", [ds.samples.ids[i] for i in sel], ds.samples.img_emb[sel],
                     (ds.provenance.get("models") or {}).get("clip"), store, [loc[i] for i in sel], sf)


def _parquet_reference(url: str, store: Store, keys: list[str]) -> Reference:
    ids, embs, loc, clip = [], [], [], None
    for key in keys:
        pf = pq.ParquetFile(io.BytesIO(store.read_bytes(key)))  # whole-object read, retried by the store
        names = pf.schema_arrow.names
        col = "image_emb" if "image_emb" in names else "embedding" if "embedding" in names else None
        if col is None:
            continue
        meta = pf.schema_arrow.metadata or {}
        if b"synthgen.clip" in meta and clip is None:
            clip = json.loads(meta[b"synthgen.clip"])
        t = pf.read(columns=[c for c in ("sample_id", col) if c in names])
        e = emb_matrix(t.column(col))
        sid = t.column("sample_id").to_pylist() if "sample_id" in t.column_names else \
            [f"{key}#{i}" for i in range(len(e))]
        ids += sid
        embs.append(e)
        loc += [(key, i) for i in range(len(e))]
    if not embs:
        raise ReportError(f"reference {url}: no Parquet file has an image_emb column")
    emb = np.concatenate(embs)
    sel = M.subsample_indices(len(ids), REF_MAX, SEED)
    return Reference(url, "parquet", [ids[i] for i in sel], emb[sel], clip, store, [loc[i] for i in sel])


def clip_embedder(clip_spec: dict[str, Any] | None) -> Any:
    """The dataset's CLIP (from its job spec), to embed reference images or zero-shot class prompts."""
    from pipelines.config import ClipSpec
    from pipelines.embed.clip import ClipEmbedder

    if not clip_spec:
        raise ReportError("the dataset's provenance names no CLIP model")
    return ClipEmbedder(ClipSpec.model_validate(clip_spec))


def _embed_image_folder(url: str, store: Store, images: list[str], clip_spec: dict[str, Any] | None) -> Reference:
    from PIL import Image

    sel = M.subsample_indices(len(images), REF_MAX, SEED)
    keys = [images[i] for i in sel]
    embedder = clip_embedder(clip_spec)
    embs = []
    for i in range(0, len(keys), 256):
        ims = [Image.open(io.BytesIO(store.read_bytes(k))).convert("RGB") for k in keys[i:i + 256]]
        embs.append(embedder.image_embeddings(ims))
    return Reference(url, "images", keys, np.concatenate(embs), embedder.info, store, [(k, -1) for k in keys])


def reference_section(ds: Dataset, ref: Reference | None, ref_error: str | None,
                      dv: DecisionView | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(json section, extra for the HTML: pair rows, similarity arrays)."""
    extra: dict[str, Any] = {}
    out: dict[str, Any] = {}
    curated = {k: M.summary(not_none(vals), seed=SEED)
               for k, vals in sorted((dv.scores if dv else {}).items()) if REFSIM.search(k)}
    if curated:
        out["curation_reference_top1"] = curated
        extra["curation_sims"] = {k: np.asarray(not_none(dv.scores[k])) for k in curated}
    if ref is None:
        out |= {"available": False, "note": ref_error or "no reference set given (synthgen report --reference URL)"}
        return out, extra
    s = ds.samples
    if s.img_emb is None or not len(s.ids):
        out |= {"available": False, "note": "the dataset has no published embeddings"}
        return out, extra
    if ref.emb.shape[1] != s.img_emb.shape[1]:
        out |= {"available": False, "note": f"reference embeddings have dimension {ref.emb.shape[1]}, the dataset's "
                                            f"{s.img_emb.shape[1]}: embed the reference with the dataset's CLIP"}
        return out, extra
    ds_clip = (ds.provenance.get("models") or {}).get("clip") or {}
    same_clip = None
    if ref.clip and ds_clip.get("weights_sha256") and ref.clip.get("weights_sha256"):
        same_clip = ref.clip.get("weights_sha256") == ds_clip.get("weights_sha256")
    gen, rem = M.normalise(s.img_emb), M.normalise(ref.emb)
    gi, ri = M.subsample_indices(len(gen), DIST_SAMPLE, SEED), M.subsample_indices(len(rem), DIST_SAMPLE, SEED + 1)
    out |= {"available": True, "source": ref.source, "kind": ref.kind, "n_reference": len(rem),
            "n_generated": len(gen), "reference_clip": ref.clip, "same_clip_as_dataset": same_clip}
    if len(gi) >= 2 and len(ri) >= 2:
        out["cmmd"] = {"value": M.cmmd(gen[gi], rem[ri]), "n_generated": len(gi), "n_reference": len(ri),
                       "sigma": M.CMMD_SIGMA, "scale": M.CMMD_SCALE, "estimator": "unbiased U-statistic"}
    n_fd = min(FD_SAMPLE, len(gen), len(rem))
    if n_fd >= 2:
        fg, fr = M.subsample_indices(len(gen), n_fd, SEED + 2), M.subsample_indices(len(rem), n_fd, SEED + 3)
        out["fd"] = {"value": M.frechet_distance(gen[fg], rem[fr]), "n_per_side": n_fd, "fixed_size": FD_SAMPLE,
                     "at_fixed_size": n_fd == FD_SAMPLE, "features": "L2-normalised CLIP image embeddings"}
    if min(len(gi), len(ri)) > M.PRDC_K:
        out["prdc"] = M.prdc(rem[ri], gen[gi], M.PRDC_K) | {"k": M.PRDC_K, "n_generated": len(gi),
                                                          "n_reference": len(ri)}
    top, arg = M.top1_cosine(gen, rem)
    base, _ = M.top1_cosine(rem[ri], rem[ri], exclude_self=True) if len(ri) > 1 else (np.zeros(0), None)
    order = np.lexsort((np.arange(len(top)), -top))[:CLOSEST_PAIRS]
    out["memorisation"] = {
        "threshold_cosine": MEMO_THRESHOLD, "top1": M.summary(top, seed=SEED),
        "flagged": int((top >= MEMO_THRESHOLD).sum()), "flagged_rate": float((top >= MEMO_THRESHOLD).mean()),
        "reference_self_top1": M.summary(base, seed=SEED),
        "closest_pairs": [{"sample_id": s.ids[i], "reference_id": ref.ids[arg[i]], "cosine": float(top[i])}
                          for i in order],
    }
    extra |= {"top1": top, "baseline": base, "pairs": [(int(i), int(arg[i]), float(top[i])) for i in order]}
    return out, extra
