"""The audit report of a published dataset: one self-contained HTML file plus ``report.json``.

Reads only what a published dataset holds (``index.json`` or, at publish time, the index about to be
written; ``provenance.json``, ``decisions.parquet``, ``manifest.parquet``, ``timings.parquet``,
``embeddings/``, shards, optional ``curation.json``), through :class:`~pipelines.storage.Store`, so any
fsspec URL works. Memory is flat in the number of samples apart from the embeddings (n x d float32) and a
few scalars per sample: shards are streamed one at a time, and only the images the report shows or
judges (a fixed number per prompt group) are kept.

Sections whose inputs are absent (no curation scores, no reference set, no judge-readable prompts) say
so instead of failing. Every number the HTML shows is in ``report.json``, which is deterministic: the
same dataset (and reference) gives byte-identical JSON (fixed seeds, deterministic subsets, floats
rounded to 6 significant digits).

Sections (HTML ids): ``summary``, ``groups``, ``alignment``, ``diversity``, ``reference``, ``safety``,
``curation``, ``methods``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import posixpath
import re
import sys
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import metrics as M
from .storage import Store

REPORT_FORMAT = "synthgen-report"
REPORT_VERSION = 1
GRID_PER_GROUP = 8  # images shown per prompt group
JUDGE_PER_GROUP = 100  # images per group the judge examines (deterministic subset)
MAX_GROUPS_SHOWN = 24  # groups with a grid and a plot in the HTML (all groups are in report.json)
DIST_SAMPLE = 5000  # at most this many embeddings per side for CMMD and PRDC (deterministic subset)
FD_SAMPLE = 2000  # FD is computed on exactly this many samples per side when both have them
REF_MAX = 20000  # reference embeddings used at most
MEMO_THRESHOLD = 0.95  # top-1 cosine to the reference at or above which a sample is flagged
NEAR_DUP_COS = 0.99  # within-group cosine at or above which two kept samples count as near-duplicates
CLOSEST_PAIRS = 8
FLAGGED_SHOWN = 48
THUMB_MAX = 128  # images larger than this (px) are downscaled for the HTML
N_BOOT = 1000
SEED = 0

PERCEIVED_ORDER = ("domain", "count", "shape", "colour", "size", "position", "background", "nodule",
                   "nodule_side", "nodule_size")
MAX_ATTRS_PLOTTED = 5
KNOWN_DECISION_COLUMNS = {"sample_id", "prompt_id", "kept", "reasons", "flags", "stage", "clip_score"}
_SAFETY = re.compile(r"safety|nsfw|unsafe|concept", re.I)
_REFSIM = re.compile(r"(ref|reference|protected|memor).*(sim|top1|top_1|cos)|(sim|top1|top_1|cos).*(ref|protected)",
                     re.I)
_DUPSIM = re.compile(r"dup|near|nn_sim|nn_cos|nn_distance|neighbo|prior_top1", re.I)
_ATTR = re.compile(r"attr|perceived|zero_shot|zeroshot|zs_", re.I)


class ReportError(Exception):
    """The input is not a dataset the report can read (no index, unreadable reference)."""


# ============================================================================ helpers


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def group_key(attributes: dict[str, str] | list[tuple[str, str]] | None) -> str:
    """The prompt group of a sample: its manifest ``attributes`` as sorted ``k=v`` pairs joined by ``,``
    (the key format of the curation's bias audit, so its per-group numbers line up)."""
    items = dict(attributes or {})
    return ",".join(f"{k}={items[k]}" for k in sorted(items)) or "(all)"


def _clean(obj: Any) -> Any:
    """JSON-safe and deterministic: floats to 6 significant digits, NaN/inf to null, numpy to python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            return None
        return float(f"{f:.6g}")
    return obj


def _png_thumb(png: bytes) -> str:
    """A data URI of the image, downscaled when larger than THUMB_MAX."""
    from PIL import Image

    im = Image.open(io.BytesIO(png))
    if max(im.size) > THUMB_MAX:
        im = im.convert("RGB")
        im.thumbnail((THUMB_MAX, THUMB_MAX), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        png = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _fig_uri(fig: Any, tight: bool = True) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, metadata={"Software": None}, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.hashsalt": "synthgen"})
    return plt


def _read_json(store: Store, key: str) -> Any | None:
    if not store.exists(key):
        return None
    return json.loads(store.read_bytes(key))


def _read_parquet(store: Store, key: str, columns: list[str] | None = None) -> pa.Table | None:
    if not store.exists(key):
        return None
    with store.fs.open(store.path(key), "rb") as f:
        pf = pq.ParquetFile(f)
        cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        return pf.read(columns=cols)


def _emb_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(arr), -1)


# ============================================================================ reading the dataset


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
    """Sample records of one shard, in shard order (Parquet ``record`` column, else the tar's json)."""
    if shard.parquet:
        t = _read_parquet(store, shard.parquet, ["record"])
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
        t = _read_parquet(store, shard.parquet, ["sample_id", "png"])
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
        index = _read_json(store, "index.json")
        if index is None:
            raise ReportError(f"{store.url}: no index.json (not a published synthgen dataset, or not finished)")
    provenance = _read_json(store, "provenance.json") or {}
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
            t = _read_parquet(store, sh.emb, ["sample_id", "image_emb", "text_emb"])
            if t.column("sample_id").to_pylist() != ids_here:
                raise ReportError(f"{sh.emb}: rows do not line up with shard {sh.no}")
            embs_i.append(_emb_matrix(t.column("image_emb")))
            if "text_emb" in t.column_names:
                embs_t.append(_emb_matrix(t.column("text_emb")))
    if embs_i and sum(len(e) for e in embs_i) == len(s.ids):
        s.img_emb = np.concatenate(embs_i)
        if embs_t and sum(len(e) for e in embs_t) == len(s.ids):
            s.txt_emb = np.concatenate(embs_t)
    return Dataset(store, index, provenance, shards, s, _read_parquet(store, "decisions.parquet"),
                   _read_parquet(store, "timings.parquet"), _read_parquet(store, "manifest.parquet"),
                   _read_json(store, "curation.json"), group_attrs)


# ============================================================================ reference sets


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
                t = _read_parquet(self.store, key, ["png"])
                if t is not None and "png" in t.column_names:
                    out |= {r: t.column("png")[self.locator[r][1]].as_py() for r in rs}
        return out


IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
            ds = load_dataset(store)
            if ds.samples.img_emb is None:
                raise ReportError(f"reference {url}: dataset has no embeddings")
            sf = {f"shard-{sh.no}": sh for sh in ds.shards}
            loc = [(f"shard-{n}", -1) for n in ds.samples.shard]
            sel = M.subsample_indices(len(ds.samples.ids), REF_MAX, SEED)
            return Reference(url, "synthgen-dataset", [ds.samples.ids[i] for i in sel], ds.samples.img_emb[sel],
                             (ds.provenance.get("models") or {}).get("clip"), store, [loc[i] for i in sel], sf)
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
    ids, embs, loc, clip = [], [], [], None
    for key in keys:
        with store.fs.open(store.path(key), "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            col = "image_emb" if "image_emb" in names else "embedding" if "embedding" in names else None
            if col is None:
                continue
            meta = pf.schema_arrow.metadata or {}
            if b"synthgen.clip" in meta and clip is None:
                clip = json.loads(meta[b"synthgen.clip"])
            t = pf.read(columns=[c for c in ("sample_id", col) if c in names])
        e = _emb_matrix(t.column(col))
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


def _clip_embedder(clip_spec: dict[str, Any] | None) -> Any:
    from .config import ClipSpec
    from .embed import ClipEmbedder

    if not clip_spec:
        raise ReportError("the dataset's provenance names no CLIP model")
    return ClipEmbedder(ClipSpec.model_validate(clip_spec))


def _embed_image_folder(url: str, store: Store, images: list[str], clip_spec: dict[str, Any] | None) -> Reference:
    from PIL import Image

    sel = M.subsample_indices(len(images), REF_MAX, SEED)
    keys = [images[i] for i in sel]
    embedder = _clip_embedder(clip_spec)
    embs = []
    for i in range(0, len(keys), 256):
        ims = [Image.open(io.BytesIO(store.read_bytes(k))).convert("RGB") for k in keys[i:i + 256]]
        embs.append(embedder.image_embeddings(ims))
    return Reference(url, "images", keys, np.concatenate(embs), embedder.info, store, [(k, -1) for k in keys])


def build_toyworld_reference(url: str, clip_spec: dict[str, Any], n: int = 2000, seed: int = 0, size: int = 32,
                             storage_options: dict[str, Any] | None = None) -> str:
    """Write a procedural toy-world reference set (``reference.parquet``: sample_id, png, image_emb,
    attributes) embedded with the given CLIP, drawn from the world's prior. Returns the file's URL."""
    from PIL import Image

    from .toyworld import world

    embedder = _clip_embedder(clip_spec)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {"sample_id": [], "png": [], "attributes": []}
    pil = []
    for i in range(n):
        attrs = world.sample_attributes(rng)
        arr = world.render(attrs, seed * 1_000_003 + i, size)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        rows["sample_id"].append(f"ref-{i:06d}")
        rows["png"].append(buf.getvalue())
        rows["attributes"].append(json.dumps(attrs.flat(), sort_keys=True))
        pil.append(Image.fromarray(arr))
    emb = embedder.image_embeddings(pil)
    table = pa.table({**rows, "image_emb": pa.array(list(emb), pa.list_(pa.float32()))})
    table = table.replace_schema_metadata({b"synthgen.clip": json.dumps(embedder.info).encode(),
                                           b"synthgen.reference": json.dumps(
                                               {"kind": "toyworld-prior", "n": n, "seed": seed, "size": size}).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    Store(url, storage_options).write_bytes("reference.parquet", buf.getvalue())
    return url.rstrip("/") + "/reference.parquet"


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
    get = (lambda c, d: t.column(c).to_pylist() if c in t.column_names else [d] * n)
    scores, labels, flags = {}, {}, {}
    for name, vals in _flatten_columns(t).items():
        present = [v for v in vals if v is not None]
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


def _attr_name(column: str) -> str:
    """'attr_colour' / 'perceived.colour' / 'zero_shot_colour' -> 'colour'."""
    name = column.rsplit(".", 1)[-1]
    return re.sub(r"^(attr(ibute)?s?|perceived|zero_?shot|zs)[_.-]?", "", name, flags=re.I) or name


# ============================================================================ the sections


def _summary_section(ds: Dataset, dv: DecisionView | None) -> dict[str, Any]:
    prov = ds.provenance
    counts = dict(ds.index.get("counts") or prov.get("counts") or {})
    if dv is not None:
        rejections = Counter(r for k, rs in zip(dv.kept, dv.reasons) if not k for r in (rs or ["(no reason)"]))
        flags_on_kept = Counter(f for k, rs, fs in zip(dv.kept, dv.reasons, dv.flag_lists) if k for f in rs + fs)
    else:
        rejections, flags_on_kept = Counter(prov.get("rejections") or {}), Counter()
    stage = {k: float(v) for k, v in (prov.get("stage_seconds") or {}).items()}
    out: dict[str, Any] = {
        "job": prov.get("job") or ds.index.get("job") or {},
        "description": (prov.get("job_spec") or {}).get("description"),
        "code_version": prov.get("code_version"),
        "started": prov.get("started"), "finished": prov.get("finished"),
        "models": {k: {kk: vv for kk, vv in (v or {}).items()}
                   for k, v in (prov.get("models") or {}).items()},
        "counts": counts,
        "rejections": dict(sorted(rejections.items())),
        "flags_on_kept": dict(sorted(flags_on_kept.items())),
        "stage_seconds": stage,
        "published_samples": len(ds.samples.ids),
        "groups": len(set(ds.samples.group)),
    }
    wall = next((v for k, v in stage.items() if k.startswith("generate") and "wall" in k), None)
    generated = None
    if ds.timings is not None and "sample_id" in ds.timings.column_names:
        generated = ds.timings.num_rows
        t = ds.timings
        per = {}
        for col in ("gen_ms", "clip_ms"):
            if col in t.column_names:
                v = np.asarray([x for x in t.column(col).to_pylist() if x is not None], np.float64)
                if v.size:
                    per[col] = {"median": float(np.median(v)), "mean": float(v.mean())}
        if "gen_worker" in t.column_names:
            per["workers"] = len(set(t.column("gen_worker").to_pylist()))
        out["per_sample"] = per
    out["throughput"] = {"generated": generated, "wall_seconds": wall,
                         "images_per_s": (generated / wall) if generated and wall else None}
    return out


def _perceived_from_decisions(dv: DecisionView | None, idx_of: dict[str, int], ds: Dataset) -> \
        tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, list[str]]]] | None:
    """Per group and attribute, labels of all generated samples (before) and the kept ones (after), from
    string label columns the curation wrote into decisions.parquet."""
    if dv is None or not dv.labels:
        return None
    pid_group = _prompt_groups(ds)
    before: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    after: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for col, vals in dv.labels.items():
        attr = _attr_name(col)
        for i, v in enumerate(vals):
            if v is None:
                continue
            sid = dv.sample_ids[i]
            g = ds.samples.group[idx_of[sid]] if sid in idx_of else pid_group.get(dv.prompt_ids[i])
            if g is None:
                continue
            before[g][attr].append(v)
            if dv.kept[i]:
                after[g][attr].append(v)
    return before, after


def _prompt_groups(ds: Dataset) -> dict[str, str]:
    if ds.manifest is None or "prompt_id" not in ds.manifest.column_names:
        return {}
    attrs = ds.manifest.column("attributes").to_pylist() if "attributes" in ds.manifest.column_names else \
        [None] * ds.manifest.num_rows
    return {p: group_key(a) for p, a in zip(ds.manifest.column("prompt_id").to_pylist(), attrs)}


@dataclass
class JudgeResult:
    available: bool
    note: str = ""
    verdicts: dict[int, dict[str, str]] = field(default_factory=dict)  # sample index -> judged attributes
    specs: dict[int, dict[str, str]] = field(default_factory=dict)  # sample index -> attributes the prompt asks


def _run_judge(pngs: dict[int, bytes], prompts: list[str]) -> JudgeResult:
    try:
        from .toyworld.captions import parse_caption
        from .toyworld.judge import judge
    except Exception as e:  # noqa: BLE001 - a missing/ broken toy world only removes this subsection
        return JudgeResult(False, f"toy-world judge not importable ({type(e).__name__}: {e})")
    from PIL import Image

    specs = {i: parse_caption(prompts[i]) for i in pngs}
    if not any(specs.values()):
        return JudgeResult(False, "no prompt is a toy-world caption, so the non-learned judge does not apply")
    verdicts = {i: judge(Image.open(io.BytesIO(pngs[i]))) for i in sorted(pngs)}
    return JudgeResult(True, "", verdicts, specs)


def _zero_shot_vocab() -> dict[str, dict[str, list[str]]]:
    """attribute -> label -> prompts: the toy world's own zero-shot vocabulary when it has one."""
    from .toyworld.world import COLOURS, SHAPES

    vocab: dict[str, dict[str, list[str]]] = {
        "colour": {c: [f"a {c} shape"] + [f"a {c} {s}" for s in SHAPES] for c in COLOURS},
        "shape": {s: [f"a {s}"] + [f"a {c} {s}" for c in COLOURS] for s in SHAPES}}
    try:
        from .toyworld.clip_eval import ZERO_SHOT
    except Exception:  # noqa: BLE001 - the fallback above is the same vocabulary
        return vocab
    out = {}
    for attr, v in ZERO_SHOT.items():
        if isinstance(v, dict) and all(isinstance(p, (list, tuple)) for p in v.values()):
            out[attr] = {str(k): [str(x) for x in p] for k, p in v.items()}
        elif isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], dict):  # (names, templates)
            out[attr] = {k: [t.format(n) for t in v[1]] for k, n in v[0].items()}
    return out or vocab


def _zero_shot(ds: Dataset, rows: list[int]) -> tuple[dict[str, dict[int, str]], str]:
    """CLIP zero-shot colour/shape labels of the given samples from their stored image embeddings, with
    the toy world's class prompts encoded by the dataset's own CLIP."""
    if ds.samples.img_emb is None:
        return {}, "no embeddings published"
    try:
        embedder = _clip_embedder((ds.provenance.get("job_spec") or {}).get("clip"))
    except Exception as e:  # noqa: BLE001 - weights not reachable from here: the section says so
        return {}, f"the dataset's CLIP could not be loaded here ({type(e).__name__}: {e})"
    emb = M.normalise(ds.samples.img_emb[rows])
    out: dict[str, dict[int, str]] = {}
    for attr, prompts in _zero_shot_vocab().items():
        labels = list(prompts)
        cls = M.normalise(np.stack([embedder.text_embeddings(prompts[c]).mean(0) for c in labels]))
        if cls.shape[1] != emb.shape[1]:
            return {}, (f"the CLIP named in provenance embeds text in {cls.shape[1]} dimensions, the published image "
                        f"embeddings have {emb.shape[1]}")
        pred = (emb @ cls.T).argmax(1)
        out[attr] = {r: labels[p] for r, p in zip(rows, pred)}
    return out, ""


def _rate(values: list[bool], seed: int = SEED) -> dict[str, Any]:
    if not values:
        return {"n": 0, "rate": None, "lo": None, "hi": None}
    lo, hi = M.bootstrap_ci(np.asarray(values, np.float64), n_boot=N_BOOT, seed=seed)
    return {"n": len(values), "rate": float(np.mean(values)), "lo": lo, "hi": hi}


def _alignment_section(ds: Dataset, groups: list[str], jr: JudgeResult,
                       zs: tuple[dict[str, dict[int, str]], str]) -> dict[str, Any]:
    s = ds.samples
    clip = np.asarray(s.clip, np.float64)
    out: dict[str, Any] = {
        "clipscore": {"formula": "100 * max(cos(image_emb, text_emb), 0)", "scale": "0..100",
                      "overall": M.summary(clip, seed=SEED),
                      "per_group": {g: M.summary(clip[[i for i, x in enumerate(s.group) if x == g]], seed=SEED)
                                    for g in groups}},
    }
    if s.img_emb is not None and s.txt_emb is not None and len(s.ids):
        from .embed import clip_score

        recomputed = clip_score(s.img_emb, s.txt_emb)
        out["clipscore"]["max_abs_diff_records_vs_embeddings"] = float(np.nanmax(np.abs(recomputed - clip)))
    judge: dict[str, Any] = {"available": jr.available, "note": jr.note}
    if jr.available:
        from .toyworld.judge import agreement

        per_attr: dict[str, list[bool]] = defaultdict(list)
        per_group_all: dict[str, list[bool]] = defaultdict(list)
        all_ok, with_spec = [], []
        unknown = 0
        for i, verdict in jr.verdicts.items():
            spec = jr.specs.get(i) or {}
            if verdict.get("domain") == "unknown":
                unknown += 1
            if not spec:
                continue
            agree = agreement(spec, verdict)
            for k, v in agree.items():
                per_attr[k].append(bool(v))
            ok = all(agree.values()) if agree else False
            all_ok.append(ok)
            with_spec.append(i)
            per_group_all[s.group[i]].append(ok)
        judge |= {
            "judged": len(jr.verdicts), "unparsed_images": unknown,
            "unparsed_rate": unknown / max(len(jr.verdicts), 1),
            "prompt_agreement": {k: _rate(v) for k, v in sorted(per_attr.items())},
            "all_specified_correct": _rate(all_ok),
            "per_group_all_specified_correct": {g: _rate(per_group_all[g]) for g in groups if g in per_group_all},
        }
        pos = [s.clip[i] for i, ok in zip(with_spec, all_ok) if ok]
        neg = [s.clip[i] for i, ok in zip(with_spec, all_ok) if not ok]
        judge["clipscore_vs_judge"] = {
            "auc": M.auc(pos, neg), "n_correct": len(pos), "n_incorrect": len(neg),
            "mean_clipscore_correct": float(np.mean(pos)) if pos else None,
            "mean_clipscore_incorrect": float(np.mean(neg)) if neg else None,
            "meaning": "P(CLIPScore of a judge-correct sample > that of a judge-incorrect one); 0.5 = CLIPScore "
                       "carries no information about what the judge sees",
        }
        zsl, zs_note = zs
        zero: dict[str, Any] = {"available": bool(zsl), "note": zs_note}
        for attr, labels in sorted(zsl.items()):
            pairs_j = [(labels[i], jr.verdicts[i].get(attr)) for i in labels
                       if jr.verdicts.get(i, {}).get("count") == "1" and jr.verdicts[i].get(attr) not in
                       (None, "unknown")]
            pairs_p = [(labels[i], jr.specs[i][attr]) for i in labels if attr in (jr.specs.get(i) or {})]
            pairs_jp = [(jr.verdicts[i].get(attr, "unknown"), jr.specs[i][attr]) for i in labels
                        if attr in (jr.specs.get(i) or {})]
            zero[attr] = {
                "clip_vs_judge": _rate([a == b for a, b in pairs_j]) | {
                    "kappa": M.cohen_kappa([a for a, _ in pairs_j], [b for _, b in pairs_j])},
                "clip_vs_prompt": _rate([a == b for a, b in pairs_p]),
                "judge_vs_prompt": _rate([a == b for a, b in pairs_jp]),
            }
        judge["clip_zero_shot"] = zero
    out["judge"] = judge
    return out


def _diversity_section(ds: Dataset, groups: list[str], dv: DecisionView | None) -> dict[str, Any]:
    s = ds.samples
    out: dict[str, Any] = {"vendi": {"available": s.img_emb is not None,
                                     "definition": "exp(entropy of eigenvalues of K/n), K = cosine kernel of "
                                                   "L2-normalised CLIP image embeddings; 1 = all identical, "
                                                   "n = all orthogonal"}}
    by_group = defaultdict(list)
    for i, g in enumerate(s.group):
        by_group[g].append(i)
    near: dict[str, Any] = {}
    if s.img_emb is not None and len(s.ids):
        emb = M.normalise(s.img_emb)
        out["vendi"]["overall"] = {"n": len(s.ids), "score": M.vendi_score(emb, normalised=True),
                                   "embedding_dim": int(emb.shape[1])}
        out["vendi"]["per_group"] = {g: {"n": len(by_group[g]),
                                         "score": M.vendi_score(emb[by_group[g]], normalised=True)}
                                     for g in groups}
        pairs = 0
        for g in groups:
            rows = by_group[g]
            if len(rows) > 1:
                sim, _ = M.top1_cosine(emb[rows], emb[rows], exclude_self=True)
                pairs += int((sim >= NEAR_DUP_COS).sum())
        near = {"threshold_cosine": NEAR_DUP_COS, "samples_with_near_duplicate_in_group": pairs,
                "rate": pairs / len(s.ids)}
    pix = Counter(p for p in s.pixel if p)
    exact = sum(c - 1 for c in pix.values() if c > 1)
    dups: dict[str, Any] = {
        "residual_exact_pixel_duplicates": {"count": exact, "rate": exact / max(len(s.ids), 1)},
        "residual_near_duplicates": near,
    }
    if dv is not None:
        n = len(dv.sample_ids)
        by_reason = Counter(r for k, rs in zip(dv.kept, dv.reasons) for r in rs if _DUPSIM.search(r) or "dup" in r)
        dups["rejected_by_method"] = {r: {"count": c, "rate": c / max(n, 1)} for r, c in sorted(by_reason.items())}
        dups["decisions_rows"] = n
        dups["similarity_scores"] = {k: M.summary([v for v in vals if v is not None], seed=SEED)
                                     for k, vals in sorted(dv.scores.items())
                                     if _DUPSIM.search(k) and not _REFSIM.search(k)}
    else:
        dups["note"] = "decisions.parquet absent: curation rejections by method unknown"
    out["duplicates"] = dups
    return out


def _reference_section(ds: Dataset, ref: Reference | None, ref_error: str | None,
                       dv: DecisionView | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(json section, extra for the HTML: pair rows, similarity arrays)."""
    extra: dict[str, Any] = {}
    out: dict[str, Any] = {}
    curated = {k: M.summary([v for v in vals if v is not None], seed=SEED)
               for k, vals in sorted((dv.scores if dv else {}).items()) if _REFSIM.search(k)}
    if curated:
        out["curation_reference_top1"] = curated
        extra["curation_sims"] = {k: np.asarray([v for v in dv.scores[k] if v is not None]) for k in curated}
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


def _safety_thresholds(ds: Dataset) -> dict[str, float]:
    cur = ds.curation if isinstance(ds.curation, dict) else {}
    out = {}
    for c in ((cur.get("safety") or {}).get("concepts") or []):
        if isinstance(c, dict) and isinstance(c.get("threshold"), (int, float)):
            out[str(c.get("name"))] = float(c["threshold"])
    return out


def _safety_section(ds: Dataset, dv: DecisionView | None, idx_of: dict[str, int]) -> tuple[dict[str, Any], list[int]]:
    if dv is None:
        return {"available": False, "note": "decisions.parquet absent"}, []
    cols = {k: v for k, v in dv.scores.items() if _SAFETY.search(k)}
    flag_cols = {k: v for k, v in dv.flags.items() if _SAFETY.search(k)}
    flagged = [i for i in range(len(dv.sample_ids))
               if any(_SAFETY.search(r) for r in dv.reasons[i] + dv.flag_lists[i])
               or any(v[i] for v in flag_cols.values())]
    if not cols and not flagged:
        return {"available": False, "note": "no safety scores or flags in decisions.parquet (image-safety "
                                            "screening was not run)"}, []
    thr = _safety_thresholds(ds)
    out = {"available": True, "mode": ((ds.curation or {}).get("safety") or {}).get("mode")
           if isinstance(ds.curation, dict) else None,
           "thresholds": {k: thr.get(k.rsplit(".", 1)[-1]) for k in sorted(cols)},
           "scores": {k: M.summary([x for x in v if x is not None], seed=SEED) for k, v in sorted(cols.items())},
           "flagged": len(flagged), "flagged_kept": sum(dv.kept[i] for i in flagged),
           "flagged_samples": [{"sample_id": dv.sample_ids[i], "kept": dv.kept[i],
                                "reasons": dv.reasons[i] + dv.flag_lists[i],
                                "scores": {k: v[i] for k, v in sorted(cols.items())}} for i in flagged]}
    shown = [idx_of[dv.sample_ids[i]] for i in flagged if dv.sample_ids[i] in idx_of][:FLAGGED_SHOWN]
    return out, shown


def _find_before_after(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    found = []
    if isinstance(obj, dict):
        if "before" in obj and "after" in obj:
            name = obj.get("name") or obj.get("filter") or "/".join(path) or "curation"
            found.append((str(name), obj["before"], obj["after"]))
        for k, v in obj.items():
            if k not in ("before", "after"):
                found += _find_before_after(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _find_before_after(v, path + (str(i),))
    return found


def _shares(dist: Any) -> dict[str, float] | None:
    """{value: count | share | {share|p|count: x}} -> shares summing to 1."""
    if not isinstance(dist, dict) or not dist:
        return None
    vals = {}
    for k, v in dist.items():
        if isinstance(v, dict):
            v = next((v[x] for x in ("count", "n", "share", "p", "prob", "fraction") if x in v), None)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return None
        vals[str(k)] = float(v)
    tot = sum(vals.values())
    return {k: v / tot for k, v in sorted(vals.items())} if tot > 0 else None


def _audit_totals(audit: list[Any]) -> dict[str, dict[str, float]]:
    """Counts per attribute value summed over the groups of one bias-audit list (curation.json)."""
    tot: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in audit:
        if not isinstance(e, dict) or not isinstance(e.get("values"), list) or not isinstance(e.get("counts"), list):
            continue
        for v, c in zip(e["values"], e["counts"]):
            tot[str(e.get("attribute"))][str(v)] += float(c or 0)
    return {a: dict(d) for a, d in sorted(tot.items())}


def _curation_from_stages(cur: dict[str, Any]) -> dict[str, Any]:
    """curation.json with ``stages`` (survivors after each filter, each with its bias audit)."""
    stages = [st for st in cur["stages"] if isinstance(st, dict)]
    out: dict[str, Any] = {"stages": [{k: st.get(k) for k in ("stage", "remaining", "removed")} for st in stages]}
    audited = [st for st in stages if isinstance(st.get("audit"), list)]
    filters = []
    for prev, now in zip(audited, audited[1:]):
        b, a = _audit_totals(prev["audit"]), _audit_totals(now["audit"])
        rows = {}
        for attr in sorted(set(b) | set(a)):
            bs, as_ = _shares(b.get(attr) or {}) or {}, _shares(a.get(attr) or {}) or {}
            rows[attr] = {v: {"before": bs.get(v, 0.0), "after": as_.get(v, 0.0)} for v in sorted(set(bs) | set(as_))}
        filters.append({"filter": now.get("stage"), "before_stage": prev.get("stage"), "removed": now.get("removed"),
                        "attributes": rows})
    out["filters"] = filters
    if len(audited) >= 2:  # per group: generated vs final survivors, with the curation's own intervals
        first = {(e.get("group"), e.get("attribute")): e for e in audited[0]["audit"] if isinstance(e, dict)}
        per_group: dict[str, dict[str, Any]] = defaultdict(dict)
        for e in audited[-1]["audit"]:
            if not isinstance(e, dict) or (e.get("group"), e.get("attribute")) not in first:
                continue
            b = first[(e.get("group"), e.get("attribute"))]
            per_group[str(e.get("group"))][str(e.get("attribute"))] = {
                "values": e.get("values"), "before": {"n": b.get("n"), "p": b.get("p"), "p_ci": b.get("p_ci")},
                "after": {"n": e.get("n"), "p": e.get("p"), "p_ci": e.get("p_ci")},
                "after_stage": audited[-1].get("stage")}
        out["per_group"] = dict(sorted(per_group.items()))
    for key in ("counts", "reasons", "flags", "dedup", "rebalance", "bias"):
        if key in cur:
            out[key] = cur[key]
    return out


def _curation_section(ds: Dataset) -> dict[str, Any]:
    cur = ds.curation
    if cur is None:
        return {"available": False, "note": "curation.json absent (curation wrote no per-filter distributions)"}
    if isinstance(cur, dict) and isinstance(cur.get("stages"), list):
        out = {"available": True, **_curation_from_stages(cur)}
        if not out["filters"]:
            out["note"] = ("no bias audit in curation.json (curation.bias.attributes not configured): per-filter "
                           "attribute distributions are not available, only the counts per stage")
        return out
    entries = []  # any other layout: every {before, after} pair found anywhere
    for name, before, after in _find_before_after(cur):
        attrs = sorted(set(before) | set(after)) if isinstance(before, dict) and isinstance(after, dict) else []
        rows = {}
        for a in attrs:
            b, f = _shares(before.get(a)), _shares(after.get(a))
            if b is None and f is None:
                continue
            rows[a] = {v: {"before": (b or {}).get(v, 0.0), "after": (f or {}).get(v, 0.0)}
                       for v in sorted(set(b or {}) | set(f or {}))}
        if not rows:  # before/after are flat distributions of one attribute
            b, f = _shares(before), _shares(after)
            if b is not None or f is not None:
                rows["value"] = {v: {"before": (b or {}).get(v, 0.0), "after": (f or {}).get(v, 0.0)}
                                 for v in sorted(set(b or {}) | set(f or {}))}
        entries.append({"filter": name, "attributes": rows})
    return {"available": True, "filters": entries,
            "note": "" if entries else "curation.json has no before/after distributions the report understands"}


# ============================================================================ plots


def _bar_h(plt: Any, items: dict[str, float], title: str, xlabel: str, color: str = "#4C72B0",
           base: float = 0.0) -> str | None:
    items = {k: float(v) for k, v in items.items() if v is not None and math.isfinite(float(v))}
    if not items:
        return None
    names = list(items)
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(names) + 0.9))
    vals = [items[n] for n in names]
    ax.barh(range(len(names)), [v - base for v in vals], left=base, color=color)
    top = max(vals + [base + 1e-9])
    for y, v in enumerate(vals):
        ax.text(v + (top - base) * 0.01, y, _fmt(float(v)), va="center", fontsize=7)
    ax.set_xlim(base, base + (top - base) * 1.12)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _fig_uri(fig)


def _group_attr_plot(plt: Any, p: dict[str, Any]) -> str | None:
    """Per perceived attribute: shares with 95% intervals, one bar per source (before, after, judge)."""
    from matplotlib.container import BarContainer

    series = [(name, p[key], colour) for key, name, colour in
              (("before", "before curation", "#4C72B0"), ("after", "after curation", "#DD8452"),
               ("judge", "judge (published)", "#55A868")) if p.get(key)]
    attrs = list(dict.fromkeys(a for _, d, _ in series for a in d))
    informative = [a for a in attrs if any(len(d.get(a, {})) > 1 or "unknown" in d.get(a, {}) for _, d, _ in series)]
    # attributes both sources know first, so CLIP's and the judge's views sit side by side
    attrs = sorted(informative or attrs[:1], key=lambda a: -sum(a in d for _, d, _ in series))[:MAX_ATTRS_PLOTTED]
    if not attrs:
        return None
    fig, axes = plt.subplots(1, len(attrs), figsize=(1.9 * len(attrs) + 1.3, 1.9), squeeze=False)
    fig.subplots_adjust(left=0.55 / (1.9 * len(attrs) + 1.3), right=1 - 1.1 / (1.9 * len(attrs) + 1.3), bottom=0.3,
                        top=0.88, wspace=0.35)
    for ax, attr in zip(axes[0], attrs):
        here = [(n, d[attr], c) for n, d, c in series if attr in d]
        cats = sorted({c for _, dist, _ in here for c in dist})
        x = np.arange(len(cats))
        w = 0.8 / len(here)
        for j, (label, dist, color) in enumerate(here):
            sh = np.array([dist.get(c, {}).get("share", 0.0) or 0.0 for c in cats])
            lo = np.array([dist.get(c, {}).get("lo", 0.0) or 0.0 for c in cats])
            hi = np.array([dist.get(c, {}).get("hi", 0.0) or 0.0 for c in cats])
            ax.bar(x + (j - (len(here) - 1) / 2) * w, sh, w, label=label, color=color,
                   yerr=np.vstack([np.clip(sh - lo, 0, None), np.clip(hi - sh, 0, None)]), capsize=2,
                   error_kw={"elinewidth": 0.8})
        ax.set_xticks(x, cats, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(attr, fontsize=8)
    axes[0][0].set_ylabel("share (95% CI)", fontsize=8)
    handles = {h.get_label(): h for ax in axes[0] for h in ax.containers
               if isinstance(h, BarContainer) and not h.get_label().startswith("_")}
    axes[0][-1].legend(list(handles.values()), list(handles), fontsize=6, frameon=False, loc="upper left",
                       bbox_to_anchor=(1.0, 1.0))
    return _fig_uri(fig, tight=False)


def _clip_box(plt: Any, ds: Dataset, groups: list[str], dv: DecisionView | None) -> str | None:
    s = ds.samples
    if not s.ids:
        return None
    after = [[s.clip[i] for i, g in enumerate(s.group) if g == grp] for grp in groups]
    before = None
    if dv is not None:
        pg = _prompt_groups(ds)
        gi = {g: k for k, g in enumerate(groups)}
        before = [[] for _ in groups]
        for pid, c in zip(dv.prompt_ids, dv.clip):
            g = pg.get(pid)
            if c is not None and g in gi:
                before[gi[g]].append(c)
    fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(groups) + 1.0))
    pos = np.arange(len(groups))
    import matplotlib

    horiz = {"orientation": "horizontal"} if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10) \
        else {"vert": False}
    if before is not None:
        ax.boxplot([b for b in before], positions=pos - 0.18, widths=0.3, **horiz,
                   patch_artist=True, boxprops={"facecolor": "#4C72B0", "alpha": 0.6}, showfliers=False)
    ax.boxplot([a for a in after], positions=pos + (0.18 if before is not None else 0), widths=0.3,
               **horiz, patch_artist=True, boxprops={"facecolor": "#DD8452", "alpha": 0.8}, showfliers=False)
    ax.set_yticks(pos, groups, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("CLIPScore = 100·max(cos, 0)")
    ax.set_title("CLIPScore per group" + (" (blue: all generated, orange: kept)" if before is not None else " (kept)"))
    return _fig_uri(fig)


def _hist(plt: Any, series: list[tuple[str, np.ndarray, str]], title: str, xlabel: str,
          vline: float | None = None) -> str | None:
    series = [(n, v[np.isfinite(v)], c) for n, v, c in ((n, np.asarray(v, np.float64), c) for n, v, c in series)]
    series = [x for x in series if len(x[1])]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    lo = min(float(v.min()) for _, v, _ in series)
    hi = max(float(v.max()) for _, v, _ in series)
    if vline is not None:
        lo, hi = min(lo, vline), max(hi, vline)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 41)
    for name, v, color in series:
        ax.hist(v, bins=bins, alpha=0.6, label=f"{name} (n={len(v)})", color=color, density=True)
    if vline is not None:
        ax.axvline(vline, color="#C44E52", ls="--", lw=1.2, label=f"threshold {vline:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=7, frameon=False)
    return _fig_uri(fig)


def _rates_plot(plt: Any, rates: dict[str, dict[str, Any]], title: str) -> str | None:
    items = [(k, v) for k, v in rates.items() if v.get("rate") is not None]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(items) + 1.0))
    r = np.array([v["rate"] for _, v in items])
    lo = np.array([v["lo"] for _, v in items])
    hi = np.array([v["hi"] for _, v in items])
    ax.barh(range(len(items)), r, xerr=np.vstack([r - lo, hi - r]), color="#55A868", capsize=2)
    for y, v in enumerate(r):
        ax.text(min(v, 0.86) + 0.02, y, f"{100 * v:.0f}%", va="center", fontsize=7)
    ax.set_yticks(range(len(items)), [f"{k} (n={v['n']})" for k, v in items], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("agreement rate (95% bootstrap CI)")
    ax.set_title(title)
    return _fig_uri(fig)


# ============================================================================ building


def _select(ids: list[int], sample_ids: list[str], salt: str, k: int) -> list[int]:
    """Deterministic, content-independent choice of k samples: lowest sha256(salt|sample_id)."""
    return sorted(sorted(ids, key=lambda i: _sha(f"{salt}|{sample_ids[i]}"))[:k], key=lambda i: sample_ids[i])


def build_report(store: Store, reference: str | None = None, *, index: dict[str, Any] | None = None,
                 reference_options: dict[str, Any] | None = None,
                 strict_reference: bool = False) -> tuple[dict[str, Any], str]:
    """(report.json content, HTML) for the dataset at ``store``. ``index``: the index about to be written
    (publish calls this before ``index.json`` exists); otherwise ``index.json`` is read. An unreadable
    ``reference`` is an error with ``strict_reference``, else the reference section says why it is empty."""
    ds = load_dataset(store, index)
    s = ds.samples
    dv = decision_view(ds.decisions)
    idx_of = {sid: i for i, sid in enumerate(s.ids)}
    sizes = Counter(s.group)
    planned_by_group: Counter[str] = Counter()
    if dv is not None:
        pg = _prompt_groups(ds)
        for sid, pid in zip(dv.sample_ids, dv.prompt_ids):
            g = s.group[idx_of[sid]] if sid in idx_of else pg.get(pid)
            if g is not None:
                planned_by_group[g] += 1
    groups = sorted(set(sizes) | set(planned_by_group))
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(s.group):
        by_group[g].append(i)

    # reference first: it decides which images the closest-pair view needs
    ref, ref_error = None, None
    if reference:
        try:
            ref = load_reference(reference, reference_options, (ds.provenance.get("job_spec") or {}).get("clip"))
        except (ReportError, OSError, ValueError) as e:
            if strict_reference:
                raise ReportError(f"reference set {reference!r} could not be read: {e}") from e
            ref_error = f"reference set {reference!r} could not be read: {e}"
    ref_json, ref_extra = _reference_section(ds, ref, ref_error, dv)
    safety_json, flagged_rows = _safety_section(ds, dv, idx_of)

    # the images the report shows or judges, read in one pass over the shards
    grid = {g: _select(by_group[g], s.ids, "grid", GRID_PER_GROUP) for g in groups}
    judge_rows = sorted(i for g in groups for i in _select(by_group[g], s.ids, "judge", JUDGE_PER_GROUP))
    pair_rows = [p[0] for p in ref_extra.get("pairs", [])]
    shown_groups = groups[:MAX_GROUPS_SHOWN]
    need = set(judge_rows) | set(pair_rows) | set(flagged_rows) | {i for g in shown_groups for i in grid[g]}
    pngs: dict[int, bytes] = {}
    for sh in ds.shards:
        ids_here = {s.ids[i] for i in need if s.shard[i] == sh.no}
        pngs |= {idx_of[k]: v for k, v in read_pngs(store, sh, ids_here).items()}
    thumb_rows = set(pair_rows) | set(flagged_rows) | {i for g in shown_groups for i in grid[g]}
    thumbs = {i: _png_thumb(pngs[i]) for i in sorted(thumb_rows) if i in pngs}
    jr = _run_judge({i: pngs[i] for i in judge_rows if i in pngs}, s.prompt)
    zs = _zero_shot(ds, sorted(jr.verdicts)) if jr.available else ({}, "")
    del pngs

    # perceived attributes per group: curation's labels (before/after) or the judge's (kept only)
    # perceived attributes per group: the curation's zero-shot labels of every generated sample (before and
    # after curation) and/or the judge's verdicts on published samples (rejected images are not published)
    perceived: dict[str, Any] = {}
    sources = []
    from_dec = _perceived_from_decisions(dv, idx_of, ds)
    if from_dec is not None:
        before, after = from_dec
        sources.append("CLIP zero-shot labels written by curation (decisions.parquet: " + ", ".join(sorted(dv.labels))
                       + "), all generated samples (before) and the kept ones (after)")
        for g in groups:
            perceived[g] = {"before": {a: M.proportions_ci(v, None, N_BOOT, seed=SEED)
                                       for a, v in sorted(before.get(g, {}).items())},
                            "after": {a: M.proportions_ci(v, None, N_BOOT, seed=SEED)
                                      for a, v in sorted(after.get(g, {}).items())}}
    if jr.available:
        sources.append(f"the toy-world judge on up to {JUDGE_PER_GROUP} published samples per group")
        for g in groups:
            rows = [i for i in by_group[g] if i in jr.verdicts]
            keys = [k for k in PERCEIVED_ORDER if any(k in jr.verdicts[i] for i in rows)]
            spec_keys = set(ds.group_attrs.get(g, {}))
            keys = sorted(keys, key=lambda k: (k not in spec_keys, PERCEIVED_ORDER.index(k)))
            dist = {k: M.proportions_ci([jr.verdicts[i].get(k, "unknown") for i in rows], None, N_BOOT, seed=SEED)
                    for k in keys}
            perceived.setdefault(g, {})["judge"] = dist
            perceived[g]["judged"] = len(rows)
    source = "; ".join(sources) or None

    plt = _plt()
    summary = _summary_section(ds, dv)
    alignment = _alignment_section(ds, groups, jr, zs)
    diversity = _diversity_section(ds, groups, dv)
    curation = _curation_section(ds)

    group_rows = []
    for g in groups:
        cs = alignment["clipscore"]["per_group"][g]
        group_rows.append({
            "group": g, "attributes": ds.group_attrs.get(g, {}), "planned": planned_by_group.get(g),
            "kept": sizes.get(g, 0), "clipscore": cs,
            "vendi": (diversity["vendi"].get("per_group") or {}).get(g),
            "judge_all_correct": (alignment["judge"].get("per_group_all_specified_correct") or {}).get(g),
            "grid": [s.ids[i] for i in grid[g]],
            "perceived": perceived.get(g),
        })
    report = _clean({
        "format": REPORT_FORMAT, "version": REPORT_VERSION,
        "settings": {"grid_per_group": GRID_PER_GROUP, "judge_per_group": JUDGE_PER_GROUP,
                     "dist_sample": DIST_SAMPLE, "fd_sample": FD_SAMPLE, "reference_max": REF_MAX,
                     "memorisation_threshold": MEMO_THRESHOLD, "near_duplicate_cosine": NEAR_DUP_COS,
                     "prdc_k": M.PRDC_K, "cmmd_sigma": M.CMMD_SIGMA, "cmmd_scale": M.CMMD_SCALE,
                     "bootstrap": {"resamples": N_BOOT, "level": 0.95, "seed": SEED}},
        "summary": summary,
        "groups": {"count": len(groups), "perceived_source": source, "rows": group_rows},
        "alignment": alignment, "diversity": diversity, "reference": ref_json, "safety": safety_json,
        "curation": curation,
    })

    # ---- HTML
    plots: dict[str, Any] = {}
    plots["stages"] = _bar_h(plt, {k: v for k, v in summary["stage_seconds"].items()}, "Time per stage", "seconds")
    plots["rejections"] = _bar_h(plt, summary["rejections"], "Rejections by reason", "samples", "#C44E52")
    plots["clip_groups"] = _clip_box(plt, ds, shown_groups, dv)
    plots["clip_hist"] = _hist(plt, [("kept", np.asarray(s.clip), "#DD8452")] + (
        [("all generated", np.asarray([c for c in dv.clip if c is not None]), "#4C72B0")] if dv else []),
        "CLIPScore distribution", "CLIPScore = 100·max(cos(image, text), 0)")
    j = alignment["judge"]
    plots["judge_rates"] = _rates_plot(plt, j.get("prompt_agreement") or {},
                                       "Judge agrees with the prompt, per attribute") if j["available"] else None
    zero_rates = {}
    for attr, v in (j.get("clip_zero_shot") or {}).items():
        if isinstance(v, dict) and "clip_vs_judge" in v:
            zero_rates |= {f"{attr}: CLIP vs judge": v["clip_vs_judge"], f"{attr}: CLIP vs prompt": v["clip_vs_prompt"],
                           f"{attr}: judge vs prompt": v["judge_vs_prompt"]}
    plots["zero_shot"] = _rates_plot(plt, zero_rates, "CLIP zero-shot labels vs the judge and the prompt")
    vg = diversity["vendi"].get("per_group") or {}
    plots["vendi"] = _bar_h(plt, {g: vg[g]["score"] for g in shown_groups if g in vg and vg[g]["score"] is not None},
                            "Vendi score per group (1 = no diversity)", "Vendi score", "#8172B3", base=1.0)
    if "top1" in ref_extra:
        plots["memorisation"] = _hist(plt, [("generated → reference", ref_extra["top1"], "#DD8452"),
                                            ("reference → reference (baseline)", ref_extra["baseline"], "#4C72B0")],
                                      "Top-1 cosine similarity to the reference set", "cosine", MEMO_THRESHOLD)
    for k, v in (ref_extra.get("curation_sims") or {}).items():
        plots[f"curation_ref::{k}"] = _hist(plt, [(k, v, "#DD8452")], f"{k} (from decisions.parquet)", "similarity",
                                            MEMO_THRESHOLD)
    safety_plots = []
    if dv is not None:
        for k in list((safety_json.get("scores") or {}))[:8]:
            safety_plots.append(_hist(plt, [(k, np.asarray([x for x in dv.scores[k] if x is not None]), "#C44E52")],
                                      k, "score", (safety_json.get("thresholds") or {}).get(k)))
    group_plots = {}
    for row in report["groups"]["rows"][:MAX_GROUPS_SHOWN]:
        if row.get("perceived"):
            group_plots[row["group"]] = _group_attr_plot(plt, row["perceived"])
    cur_plots = []
    filters = curation.get("filters") or []
    if "stages" in curation and filters:  # one figure per attribute: survivors' shares after each stage
        for attr in list(filters[0]["attributes"])[:6]:
            series = [(filters[0]["before_stage"], {v: x["before"] for v, x in filters[0]["attributes"][attr].items()})]
            series += [(f["filter"], {v: x["after"] for v, x in f["attributes"].get(attr, {}).items()}) for f in filters]
            cur_plots.append(("stages", attr, _curation_plot(plt, attr, series)))
    else:
        for entry in filters[:12]:
            for attr, vals in list(entry["attributes"].items())[:4]:
                series = [("before", {v: x["before"] for v, x in vals.items()}),
                          ("after", {v: x["after"] for v, x in vals.items()})]
                cur_plots.append((entry["filter"], attr, _curation_plot(plt, f"{entry['filter']}: {attr}", series)))

    pairs_view = []
    if ref is not None and ref_extra.get("pairs"):
        ref_png = ref.pngs([p[1] for p in ref_extra["pairs"]])
        for gi, ri, cos in ref_extra["pairs"]:
            pairs_view.append({"sample_id": s.ids[gi], "reference_id": ref.ids[ri], "cosine": cos,
                               "gen": thumbs.get(gi), "ref": _png_thumb(ref_png[ri]) if ri in ref_png else None})
    flagged_view = [{"sample_id": s.ids[i], "img": thumbs.get(i)} for i in flagged_rows]
    grids = {g: [{"sample_id": s.ids[i], "clip": s.clip[i], "prompt": s.prompt[i], "img": thumbs.get(i)}
                 for i in grid[g]] for g in shown_groups}

    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _fmt
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    html = env.get_template("report.html.j2").render(
        r=report, plots=plots, group_plots=group_plots, grids=grids, pairs=pairs_view, flagged=flagged_view,
        safety_plots=[p for p in safety_plots if p], cur_plots=cur_plots, shown_groups=shown_groups,
        max_groups=MAX_GROUPS_SHOWN, M=M, settings=report["settings"])
    return report, html


def _curation_plot(plt: Any, title: str, series: list[tuple[str, dict[str, float]]]) -> str | None:
    """Grouped bars: the share of each value in each series (e.g. before/after, or after each stage)."""
    cats = sorted({c for _, d in series for c in d})[:20]
    if not cats or not series:
        return None
    fig, ax = plt.subplots(figsize=(max(3.4, 0.5 * len(cats) * max(len(series), 2) / 2 + 1.8), 2.4))
    x = np.arange(len(cats))
    w = 0.8 / len(series)
    colours = plt.get_cmap("tab10").colors
    for j, (name, d) in enumerate(series):
        ax.bar(x + (j - (len(series) - 1) / 2) * w, [d.get(c, 0.0) for c in cats], w, label=name,
               color=colours[j % len(colours)])
    ax.set_xticks(x, cats, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _fig_uri(fig)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def report_bytes(report: dict[str, Any], html: str) -> tuple[bytes, bytes]:
    return (json.dumps(report, indent=1, sort_keys=True, allow_nan=False) + "\n").encode(), html.encode()


def publish_report(store: Store, index: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Build the report of a dataset being published and write ``report.json`` / ``report.html`` at its
    root; returns their index entries (sha256, bytes). Called before ``index.json`` is written."""
    report, html = build_report(store, index=index)
    out = {}
    for key, data in zip(("report.json", "report.html"), report_bytes(report, html)):
        store.write_bytes(key, data)
        out[key] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return out


def write_report(dataset_url: str, out: str, reference: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> tuple[str, str, dict[str, Any]]:
    """``synthgen report``: build the report of a published dataset and write ``out`` (HTML) and the JSON
    beside it (same name, ``.json``). Returns (html url, json url, report)."""
    report, html = build_report(Store(dataset_url, storage_options), reference,
                                reference_options=storage_options, strict_reference=True)
    js, hb = report_bytes(report, html)
    root, _, name = out.rstrip("/").rpartition("/")
    stem = name[:-5] if name.endswith(".html") else name
    html_name = name if name.endswith(".html") else f"{name}.html"
    target = Store(root or ".", storage_options)
    target.write_bytes(html_name, hb)
    target.write_bytes(f"{stem}.json", js)
    base = (root + "/") if root else ""
    return f"{base}{html_name}", f"{base}{stem}.json", report


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.report make-reference OUT_URL --dataset URL [--n N]``: a toy-world reference
    set embedded with a dataset's CLIP."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipelines.report")
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-reference")
    mk.add_argument("out")
    mk.add_argument("--dataset", required=True, help="published dataset whose CLIP embeds the reference")
    mk.add_argument("--n", type=int, default=2000)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--size", type=int, default=32)
    a = p.parse_args(argv)
    prov = _read_json(Store(a.dataset), "provenance.json") or {}
    print(build_toyworld_reference(a.out, (prov.get("job_spec") or {}).get("clip"), a.n, a.seed, a.size))


if __name__ == "__main__":
    main()
