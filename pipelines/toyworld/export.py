"""Export toy-world images as a folder of PNGs plus one Parquet table of attributes and captions.

Two flavours share one writer: a *training set* (the skewed training prior, held-out
combinations excluded, one caption per image) and a *reference set* (unskewed prior, a
disjoint seed range) used for memorisation checks and distribution metrics such as CMMD.
Everything is a pure function of (kind, n, seed, size), so an export can be rebuilt bit-exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.toyworld.captions import caption
from pipelines.toyworld.data import Example, training_examples
from pipelines.toyworld.world import DEFAULT_SIZE, render, sample_attributes

REFERENCE_SEED_OFFSET = 20_000_000
KINDS = ("train", "reference")


def reference_examples(n: int, seed: int) -> list[Example]:
    """n examples from the unskewed prior, with seeds disjoint from training and evaluation."""
    rng = np.random.default_rng([seed, 1])
    return [Example(sample_attributes(rng, skewed=False), REFERENCE_SEED_OFFSET + seed * 1_000_003 + i)
            for i in range(n)]


def export(out_dir: str | Path, kind: str = "train", n: int = 1000, seed: int = 0,
           size: int = DEFAULT_SIZE) -> Path:
    """Write `<out_dir>/images/<id>.png` and `<out_dir>/<kind>.parquet`; returns the table path.

    Columns: image_id, file (relative path), seed, size, caption, caption_spec (JSON of the
    attributes the caption states), and `attributes` (map of the image's full ground truth).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    examples = training_examples(n, seed) if kind == "train" else reference_examples(n, seed)
    rng = np.random.default_rng([seed, 2])
    rows: dict[str, list] = {k: [] for k in ("image_id", "file", "seed", "size", "caption",
                                             "caption_spec", "attributes")}
    for i, ex in enumerate(examples):
        image_id = f"{kind}-{seed}-{i:06d}"
        file = f"images/{image_id}.png"
        Image.fromarray(render(ex.attrs, ex.seed, size)).save(out / file)
        text, spec = caption(ex.attrs, rng)
        for key, value in (("image_id", image_id), ("file", file), ("seed", ex.seed),
                           ("size", size), ("caption", text),
                           ("caption_spec", json.dumps(spec, sort_keys=True)),
                           ("attributes", sorted(ex.attrs.flat().items()))):
            rows[key].append(value)
    schema = pa.schema([("image_id", pa.string()), ("file", pa.string()), ("seed", pa.int64()),
                        ("size", pa.int32()), ("caption", pa.string()),
                        ("caption_spec", pa.string()),
                        ("attributes", pa.map_(pa.string(), pa.string()))])
    path = out / f"{kind}.parquet"
    pq.write_table(pa.table(rows, schema=schema), path)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Export a toy-world image set (PNGs + Parquet).")
    parser.add_argument("out_dir")
    parser.add_argument("--kind", choices=KINDS, default="train")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    a = parser.parse_args()
    print(export(a.out_dir, a.kind, a.n, a.seed, a.size))
