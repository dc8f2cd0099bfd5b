"""The decisions and timings tables of a published dataset: schemas, where their parts live, one reader.

Both are Parquet *datasets* written by the workers, one part per block of work units:
``decisions.parquet/part-<k>-<n>.parquet`` and ``timings.parquet/part-<n>.parquet`` (Spark-style
directories, so ``pyarrow.parquet.read_table(<root>/decisions.parquet)`` reads them whole). Part names
sort in row order: generated samples (``k=0``, plan order), prompt-screened ones (``k=1``), failed ones
(``k=2``). Every part is listed in ``index.json`` ``files``. Datasets published before this layout hold
single files under the same names; :func:`read_table` reads either.
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DECISIONS = "decisions.parquet"
TIMINGS = "timings.parquet"
SUMMARY_KEY = "synthgen.curation"

_F32_MAP = pa.map_(pa.string(), pa.float32())
DECISIONS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("prompt_id", pa.string()),
        ("kept", pa.bool_()),
        ("reasons", pa.list_(pa.string())),  # why it was not kept (empty if kept)
        ("flags", pa.list_(pa.string())),  # kept-with-a-flag findings (safety/reference in report mode)
        ("stage", pa.string()),  # first stage that rejected it (null if kept)
        ("clip_score", pa.float32()),
        ("pixel_sha256", pa.string()),
        ("phash", pa.string()),
        ("exact_dup_of", pa.string()),
        ("phash_nn", pa.string()),  # nearest sample within the pHash radius, and its distance
        ("phash_nn_distance", pa.int32()),
        ("sem_cluster", pa.int32()),
        ("sem_nn", pa.string()),  # nearest sample in its k-means cluster, and the cosine
        ("sem_nn_cos", pa.float32()),
        ("dup_of", pa.string()),  # the kept sample a within-run duplicate was dropped for
        ("prior_match", pa.string()),  # "<dataset>/<sample_id>" of an earlier dataset it duplicates
        ("prior_top1_cos", pa.float32()),
        ("prior_phash_distance", pa.int32()),
        ("ref_top1_cos", _F32_MAP),  # reference set -> top-1 cosine
        ("ref_top1_id", pa.map_(pa.string(), pa.string())),
        ("ref_phash_distance", pa.map_(pa.string(), pa.int32())),
        ("safety_scores", _F32_MAP),  # concept -> score
        ("attr_probs", _F32_MAP),  # "attribute=value" -> zero-shot probability
        ("attr_labels", pa.map_(pa.string(), pa.string())),  # attribute -> perceived value
        ("group", pa.string()),  # prompt group of the bias audit
        ("qc_pred", pa.map_(pa.string(), pa.string())),  # finding QC: attribute -> value read from the image
        ("qc_score", _F32_MAP),  # attribute -> the classifier's confidence in that value
    ]
)
TIMINGS_SCHEMA = pa.schema([("sample_id", pa.string()), ("unit_id", pa.string()), ("gen_ms", pa.float64()),
                            ("clip_ms", pa.float64()), ("gen_worker", pa.string())])

GENERATED, SCREENED, FAILED = 0, 1, 2


def decisions_part(kind: int, n: int) -> str:
    return f"{DECISIONS}/part-{kind}-{n:06d}.parquet"


def timings_part(n: int) -> str:
    return f"{TIMINGS}/part-{n:06d}.parquet"


def parquet_bytes(table: pa.Table) -> bytes:
    """The one encoding of every part (zstd, no schema metadata): same rows, same bytes."""
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(None), buf, compression="zstd")
    return buf.getvalue()


def parts(index: dict[str, Any], name: str) -> list[str]:
    """The keys of table ``name`` listed in an index, in row order (the legacy single file, or parts)."""
    files = index.get("files", {})
    if name in files:
        return [name]
    return sorted(k for k in files if k.startswith(name + "/"))


def read_table(fs: Any, root: str, index: dict[str, Any], name: str,
               columns: list[str] | None = None) -> pa.Table | None:
    """Table ``name`` of the dataset at ``root`` on ``fs`` (None if the index lists none); requested
    columns a part lacks are skipped."""
    keys = parts(index, name)
    if not keys:
        return None
    tables = []
    for key in keys:
        pf = pq.ParquetFile(io.BytesIO(fs.cat_file(posixpath.join(root, key))))
        cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        tables.append(pf.read(columns=cols))
    return pa.concat_tables(tables, promote_options="default")
