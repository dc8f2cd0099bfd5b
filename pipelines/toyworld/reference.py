"""A procedural toy-world reference set for the audit report's reference section.

``python -m pipelines.toyworld.reference OUT_URL --dataset URL [--n N]`` writes ``reference.parquet``
(sample_id, png, image_emb, attributes) drawn from the world's prior and embedded with the dataset's CLIP.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io.store import Store
from pipelines.report.data import read_json
from pipelines.report.reference import clip_embedder
from pipelines.toyworld import world


def build_toyworld_reference(url: str, clip_spec: dict[str, Any], n: int = 2000, seed: int = 0, size: int = 32,
                             storage_options: dict[str, Any] | None = None) -> str:
    """Write a procedural toy-world reference set (``reference.parquet``: sample_id, png, image_emb,
    attributes) embedded with the given CLIP, drawn from the world's prior. Returns the file's URL."""
    from PIL import Image

    embedder = clip_embedder(clip_spec)
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
    meta = {"kind": "toyworld-prior", "n": n, "seed": seed, "size": size}
    table = table.replace_schema_metadata({b"synthgen.clip": json.dumps(embedder.info).encode(),
                                           b"synthgen.reference": json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    Store(url, storage_options).write_bytes("reference.parquet", buf.getvalue())
    return url.rstrip("/") + "/reference.parquet"


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipelines.toyworld.reference")
    p.add_argument("out")
    p.add_argument("--dataset", required=True, help="published dataset whose CLIP embeds the reference")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32)
    a = p.parse_args(argv)
    prov = read_json(Store(a.dataset), "provenance.json") or {}
    print(build_toyworld_reference(a.out, (prov.get("job_spec") or {}).get("clip"), a.n, a.seed, a.size))


if __name__ == "__main__":
    main()
