"""Generate one work unit: deterministic batches through a backend, PNG-encoded with labels."""

from __future__ import annotations

import os
import socket
import time

import pyarrow as pa

from .backends import Backend
from .plan import Sample, batches
from .pnglabel import encode_png, pixel_sha256
from .staging import GEN_SCHEMA, with_meta


def generate_unit(backend: Backend, samples: list[Sample], batch_size: int) -> pa.Table:
    """Rows in the unit's sample order, whatever the batching; generator info in schema metadata."""
    rows: dict[str, dict] = {}
    worker = f"{socket.gethostname()}:{os.getpid()}"
    for batch in batches(samples, batch_size):
        t0 = time.perf_counter()
        images = backend.generate(batch)
        ms = (time.perf_counter() - t0) * 1000 / len(batch)
        for s, img in zip(batch, images):
            text = {"prompt": s.prompt, "seed": str(s.seed), "model": str(backend.info["model"]),
                    "sample_id": s.sample_id}
            rows[s.sample_id] = {
                **s.to_dict(),
                "attributes": sorted(s.attributes.items()),
                "png": encode_png(img, text),
                "pixel_sha256": pixel_sha256(img),
                "gen_ms": ms,
                "gen_worker": worker,
            }
    table = pa.Table.from_pylist([rows[s.sample_id] for s in samples], schema=GEN_SCHEMA)
    return with_meta(table, "synthgen.generator", backend.info)
