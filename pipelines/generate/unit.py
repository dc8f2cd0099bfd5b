"""Generate one work unit: deterministic batches through a backend, PNG-encoded with labels."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pyarrow as pa

from pipelines.generate.backends import Backend
from pipelines.curation.dedup.hashes import perceptual_hash
from pipelines.plan.samples import Sample, batches
from pipelines.generate.encode import encode_png, pixel_sha256
from pipelines.contracts.unit import GEN_SCHEMA, with_meta


def _generate_isolating_failures(backend: Backend, batch: list[Sample]) -> list[np.ndarray | str]:
    """The batch's images; if the batch raises, each sample alone, so one bad input (an unreadable
    init image, say) fails only its own sample, recorded with its error instead of an image."""
    try:
        return list(backend.generate(batch))
    except Exception as e:
        if len(batch) == 1:
            return [f"{type(e).__name__}: {e}"[:500]]
    return [_generate_isolating_failures(backend, [s])[0] for s in batch]


def generate_unit(backend: Backend, samples: list[Sample], batch_size: int) -> pa.Table:
    """Rows in the unit's sample order, whatever the batching; generator info in schema metadata."""
    rows: dict[str, dict] = {}
    worker = f"{socket.gethostname()}:{os.getpid()}"
    for batch in batches(samples, batch_size):
        t0 = time.perf_counter()
        results = _generate_isolating_failures(backend, batch)
        ms = (time.perf_counter() - t0) * 1000 / len(batch)
        for s, img in zip(batch, results):
            if isinstance(img, str):
                rows[s.sample_id] = {**s.to_dict(), "attributes": sorted(s.attributes.items()), "png": None,
                                     "pixel_sha256": None, "gen_ms": ms, "gen_worker": worker, "error": img}
                continue
            text = {"prompt": s.prompt, "seed": str(s.seed), "model": str(backend.info["model"]),
                    "sample_id": s.sample_id}
            rows[s.sample_id] = {
                **s.to_dict(),
                "attributes": sorted(s.attributes.items()),
                "png": encode_png(img, text),
                "pixel_sha256": pixel_sha256(img),
                "phash": perceptual_hash(img),
                "gen_ms": ms,
                "gen_worker": worker,
                "error": None,
            }
    table = pa.Table.from_pylist([rows[s.sample_id] for s in samples], schema=GEN_SCHEMA)
    return with_meta(table, "synthgen.generator", backend.info)
