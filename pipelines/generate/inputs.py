"""The CPU fetch stage: a unit's input images (init/mask/style URIs) read and decoded before the
generator, so the GPU actor never waits on storage or image decoding.

An unreadable input fails only its own sample (``input_error``); the generator skips that sample.
Each (URL, size) is read once per unit: a row's samples share their inputs.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from pipelines.contracts.unit import INPUT_SCHEMA, pixels_from_bytes, pixels_to_bytes
from pipelines.generate.backends import SampleInputs
from pipelines.plan.samples import Sample

KINDS = ("init", "mask", "style")


def load_image(url: str, width: int, height: int) -> np.ndarray:
    """An input image from any fsspec URL, as RGB uint8 at the sample's size."""
    import fsspec
    from PIL import Image

    with fsspec.open(url, "rb") as f:
        im = Image.open(io.BytesIO(f.read()))
        im.load()
    return np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC))


def _error(e: Exception) -> str:
    # no object reprs (memory addresses) in the message: reruns record the same text
    msg = str(e).split(" <_io.", 1)[0]
    return f"{type(e).__name__}: {msg}"[:500]


def fetch_inputs(samples: list[Sample]) -> pa.Table | None:
    """Decoded inputs of the unit's samples, or None when no sample has any (nothing to carry)."""
    if not any(getattr(s, f"{k}_image") for s in samples for k in KINDS):
        return None
    cache: dict[tuple[str, int, int], np.ndarray | Exception] = {}
    rows = []
    for s in samples:
        row: dict[str, object] = {"sample_id": s.sample_id, "input_error": None}
        for k in KINDS:
            url = getattr(s, f"{k}_image")
            row[f"{k}_pixels"] = None
            if not url:
                continue
            key = (url, s.width, s.height)
            if key not in cache:
                try:
                    cache[key] = load_image(url, s.width, s.height)
                except Exception as e:  # any unreadable input is this sample's fault, whatever raised
                    cache[key] = e
            got = cache[key]
            if isinstance(got, Exception):
                row["input_error"] = row["input_error"] or f"{k}_image {url}: {_error(got)}"
            else:
                row[f"{k}_pixels"] = pixels_to_bytes(got)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)


def read_inputs(table: pa.Table | None, samples: list[Sample]) -> dict[str, SampleInputs | str]:
    """sample_id -> its decoded inputs, or its input error; {} when the unit has no inputs."""
    if table is None:
        return {}
    size = {s.sample_id: (s.height, s.width, 3) for s in samples}
    out: dict[str, SampleInputs | str] = {}
    for r in table.to_pylist():
        if r["input_error"]:
            out[r["sample_id"]] = r["input_error"]
            continue
        shape = size[r["sample_id"]]
        arrays = {k: None if r[f"{k}_pixels"] is None else pixels_from_bytes(r[f"{k}_pixels"], shape) for k in KINDS}
        out[r["sample_id"]] = SampleInputs(**arrays)
    return out
