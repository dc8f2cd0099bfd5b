"""Reference sets for the audit report and the metrics that compare a dataset with one.

A reference is loaded by curation's one loader of external sets (:mod:`pipelines.curation.references`:
a published synthgen dataset, Parquet with embeddings and optional images, ``.npy``, or a folder of
images embedded here with the dataset's own CLIP), at most ``REF_MAX`` rows (deterministic subset). The
section reports CMMD, FD and PRDC on deterministic subsets and the top-1 cosine of every sample to the
reference (memorisation, streamed over every published sample by :mod:`pipelines.report.scan`), with the
closest pairs for the HTML."""

from __future__ import annotations

import posixpath
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.curation import references as refsets
from pipelines.errors import SynthgenError
from pipelines.io.store import url_to_fs
from pipelines.report import metrics as M
from pipelines.report.data import REFSIM, Dataset
from pipelines.report.decisions import DecisionStats
from pipelines.report.scan import SampleScan
from pipelines.report.settings import DIST_SAMPLE, FD_SAMPLE, MEMO_THRESHOLD, REF_MAX, SEED, ReportError

IMAGE_EXT = refsets.IMAGE_EXTENSIONS


@dataclass
class Reference:
    """A loaded reference set (:class:`~pipelines.curation.references.ExternalSet`) and how to reach its images."""

    ext: refsets.ExternalSet
    storage_options: dict[str, Any] | None = None

    @property
    def source(self) -> str:
        return self.ext.source

    @property
    def kind(self) -> str:  # the names report.json has always used
        if self.ext.kind == "embeddings":
            return "npy" if self.ext.source.endswith(".npy") else "parquet"
        return {"dataset": "synthgen-dataset"}.get(self.ext.kind, self.ext.kind)

    @property
    def ids(self) -> list[str]:
        return self.ext.ids

    @property
    def emb(self) -> np.ndarray:
        return self.ext.emb

    @property
    def clip(self) -> dict[str, Any] | None:
        return self.ext.clip

    def pngs(self, rows: list[int]) -> dict[int, bytes]:
        """Encoded images of the given rows, where the set has them (one read per file)."""
        e = self.ext
        if e.file_of is None:
            return {}
        fs, _ = url_to_fs(e.source, self.storage_options)
        by_file: dict[int, list[int]] = defaultdict(list)
        for r in rows:
            if e.file_of[r] >= 0:
                by_file[int(e.file_of[r])].append(r)
        out: dict[int, bytes] = {}
        for f, rs in sorted(by_file.items()):
            path = e.files[f]
            if e.row_of is not None and e.row_of[rs[0]] >= 0:  # a Parquet file with an image column
                with fs.open(path, "rb") as fh:
                    pf = pq.ParquetFile(fh)
                    col = next(c for c in refsets.IMAGE_COLUMNS if c in pf.schema_arrow.names)
                    blobs = pf.read(columns=[col]).column(col)
                out |= {r: blobs[int(e.row_of[r])].as_py() for r in rs}
            elif path.endswith((".tar", ".parquet")):  # a shard of a published dataset: by sample id
                want = {e.ids[r]: r for r in rs}
                out |= {want[k]: v for k, v in _shard_pngs(fs, path, set(want)).items()}
            else:  # the image file itself
                out |= {r: fs.cat_file(path) for r in rs}
        return out


def _shard_pngs(fs: Any, path: str, ids: set[str]) -> dict[str, bytes]:
    if path.endswith(".parquet"):
        with fs.open(path, "rb") as fh:
            t = pq.read_table(fh, columns=["sample_id", "png"])
        return {s: t.column("png")[i].as_py() for i, s in enumerate(t.column("sample_id").to_pylist()) if s in ids}
    out = {}
    with fs.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tf:
        for member in tf:
            key, _, ext = posixpath.basename(member.name).partition(".")
            if member.isfile() and ext == "png" and key in ids:
                data = tf.extractfile(member)
                out[key] = data.read() if data else b""
    return out


def load_reference(url: str, storage_options: dict[str, Any] | None = None,
                   clip_spec: dict[str, Any] | None = None) -> Reference:
    """A reference set through curation's loader: at most ``REF_MAX`` rows (seeded subset); images are
    embedded with the dataset's CLIP (``clip_spec``), which is loaded only when images need it."""
    try:
        ext = refsets.load_reference(url, url, storage_options, lambda: clip_embedder(clip_spec),
                                     max_rows=REF_MAX, seed=SEED, hashes=False)
    except SynthgenError as e:
        raise ReportError(str(e)) from e
    if ext.emb is None or not len(ext):
        raise ReportError(f"reference {url}: no embeddings (a dataset without embeddings/, or no images)")
    return Reference(ext, storage_options)


def clip_embedder(clip_spec: dict[str, Any] | None) -> Any:
    """The dataset's CLIP (from its job spec), to embed reference images or zero-shot class prompts."""
    from pipelines.config import ClipSpec
    from pipelines.embed.clip import ClipEmbedder

    if not clip_spec:
        raise ReportError("the dataset's provenance names no CLIP model")
    return ClipEmbedder(ClipSpec.model_validate(clip_spec))


def reference_section(ds: Dataset, ref: Reference | None, ref_error: str | None, dec: DecisionStats | None,
                      scan: SampleScan) -> tuple[dict[str, Any], dict[str, Any]]:
    """(json section, extra for the HTML: closest pairs, similarity samples). The top-1 cosines of every
    published sample were streamed by the scan; CMMD, FD and PRDC use its deterministic embedding sample."""
    extra: dict[str, Any] = {}
    out: dict[str, Any] = {}
    curated = {k: dec.scores[k].summary(seed=SEED) for k in sorted(dec.scores if dec else {}) if REFSIM.search(k)}
    if curated:
        out["curation_reference_top1"] = curated
        extra["curation_sims"] = {k: (dec.scores[k].values(), dec.scores[k].n) for k in curated}
    if ref is None:
        out |= {"available": False, "note": ref_error or "no reference set given (synthgen report --reference URL)"}
        return out, extra
    if not scan.has_img_emb:
        out |= {"available": False, "note": "the dataset has no published embeddings"}
        return out, extra
    if ref.emb.shape[1] != scan.dim:
        out |= {"available": False, "note": f"reference embeddings have dimension {ref.emb.shape[1]}, the dataset's "
                                            f"{scan.dim}: embed the reference with the dataset's CLIP"}
        return out, extra
    ds_clip = (ds.provenance.get("models") or {}).get("clip") or {}
    same_clip = None
    if ref.clip and ds_clip.get("weights_sha256") and ref.clip.get("weights_sha256"):
        same_clip = ref.clip.get("weights_sha256") == ds_clip.get("weights_sha256")
    bad = scan.nonfinite().get("image_emb")
    if bad:
        raise M.NonFiniteError("embeddings", scan.bad_img_rows, scan.n, bad.total)
    rem = M.normalise(ref.emb)
    gen = M.normalise(scan.emb_all.result()[1])  # at most DIST_SAMPLE, lowest hash of the sample id
    ri = M.subsample_indices(len(rem), DIST_SAMPLE, SEED + 1)
    out |= {"available": True, "source": ref.source, "kind": ref.kind, "n_reference": len(rem),
            "n_generated": scan.n, "reference_clip": ref.clip, "same_clip_as_dataset": same_clip}
    if len(gen) >= 2 and len(ri) >= 2:
        out["cmmd"] = {"value": M.cmmd(gen, rem[ri]), "n_generated": len(gen), "n_reference": len(ri),
                       "sigma": M.CMMD_SIGMA, "scale": M.CMMD_SCALE, "estimator": "unbiased U-statistic"}
    n_fd = min(FD_SAMPLE, len(gen), len(rem))
    if n_fd >= 2:
        fg, fr = M.subsample_indices(len(gen), n_fd, SEED + 2), M.subsample_indices(len(rem), n_fd, SEED + 3)
        out["fd"] = {"value": M.frechet_distance(gen[fg], rem[fr]), "n_per_side": n_fd, "fixed_size": FD_SAMPLE,
                     "at_fixed_size": n_fd == FD_SAMPLE, "features": "L2-normalised CLIP image embeddings"}
    if min(len(gen), len(ri)) > M.PRDC_K:
        out["prdc"] = M.prdc(rem[ri], gen, M.PRDC_K) | {"k": M.PRDC_K, "n_generated": len(gen),
                                                       "n_reference": len(ri)}
    base, _ = M.top1_cosine(rem[ri], rem[ri], exclude_self=True) if len(ri) > 1 else (np.zeros(0), None)
    top = scan.ref
    pairs = top.closest.items()
    out["memorisation"] = {
        "threshold_cosine": MEMO_THRESHOLD, "top1": top.top1.summary(seed=SEED),
        "flagged": top.flagged, "flagged_rate": top.flagged / scan.n,
        "reference_self_top1": M.summary(base, seed=SEED),
        "closest_pairs": [{"sample_id": sid, "reference_id": ref.ids[r], "cosine": cos} for sid, r, cos, _ in pairs],
    }
    extra |= {"top1": (top.top1.values(), top.top1.n), "baseline": base, "pairs": pairs}
    return out, extra
