"""Regenerate the polars-written manifests (committed; polars is not a dependency):
``python tests/data/encodings/make_polars.py`` with any Python that has polars.

Each file holds the logical content of ``rows.json`` in one of the encodings polars writes."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
ROWS = json.loads((HERE / "rows.json").read_text())
FIELDS = ["prompt_id", "prompt", "negative_prompt", "seed", "num_images", "steps", "guidance_scale",
          "height", "width", "attributes"]
KEYS = sorted({k for r in ROWS for k in r.get("attributes", {})})


def frame(attributes: pl.Series) -> pl.DataFrame:
    cols = {f: [r.get(f) for r in ROWS] for f in FIELDS if f != "attributes"}
    return pl.DataFrame(cols, schema_overrides={"guidance_scale": pl.Float64}).with_columns(attributes)


def main() -> None:
    attrs = [r.get("attributes") for r in ROWS]
    # A struct with every key (null where a row lacks it), as polars infers from dicts.
    struct = pl.Series("attributes", [{k: (a or {}).get(k) for k in KEYS} if a else None for a in attrs],
                       dtype=pl.Struct({k: pl.String for k in KEYS}))
    frame(struct).write_parquet(HERE / "polars_struct.parquet")
    # A list of {key, value} structs: polars' own reading of a Parquet map.
    pairs = pl.Series("attributes", [[{"key": k, "value": v} for k, v in a.items()] if a else None for a in attrs],
                      dtype=pl.List(pl.Struct({"key": pl.String, "value": pl.String})))
    df = frame(pairs).with_columns(pl.col("prompt").cast(pl.Categorical))
    df.write_parquet(HERE / "polars_pairs_categorical.parquet")
    # The all-null optional columns of a pandas-style frame: Null and Float64 dtypes.
    df = frame(pairs).with_columns(pl.lit(None).alias("init_image"), pl.col("steps").cast(pl.Float64))
    df.write_parquet(HERE / "polars_null_and_float.parquet")


if __name__ == "__main__":
    main()
