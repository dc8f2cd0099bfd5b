"""Generate one work unit: deterministic batches through a backend, returned as raw pixels.

The generator actor does only this; PNG encoding, labels and hashes happen in a CPU stage
(``encode.encode_unit``), input images are decoded before it (``inputs.fetch_inputs``).
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque

import numpy as np
import pyarrow as pa

from pipelines.contracts.unit import PIXEL_SCHEMA, pixels_to_bytes, with_meta
from pipelines.generate.backends import Backend, SampleInputError, SampleInputs
from pipelines.generate.faults import DeviceLostError, is_device_lost, is_oom, release_memory
from pipelines.plan.samples import Sample, batches

Result = np.ndarray | str  # an image, or the sample's error


def _call(backend: Backend, batch: list[Sample], inputs: dict[str, SampleInputs | str],
          pad_to: int | None) -> list[np.ndarray]:
    """One backend call; with ``pad_to``, the batch is filled up with copies of its last sample
    (fixed shapes for compiled models) whose images are discarded. Every real sample keeps its
    own generator, so its image does not depend on the padding."""
    real = len(batch)
    if pad_to and real < pad_to:
        batch = batch + [batch[-1]] * (pad_to - real)
    got = [inputs.get(s.sample_id) for s in batch]
    if any(isinstance(g, SampleInputs) for g in got):
        images = backend.generate(batch, got)  # type: ignore[call-arg]
    else:
        images = backend.generate(batch)
    return list(images)[:real]


def generate_unit(backend: Backend, samples: list[Sample], batch_size: int,
                  inputs: dict[str, SampleInputs | str] | None = None, pad: bool = False) -> pa.Table:
    """Rows in the unit's sample order, whatever the batching; generator info and the batch sizes
    used (with any out-of-memory retries) in schema metadata.

    Failures, by cause: a sample whose input was unreadable (``inputs`` holds its error) or whose
    backend call raised ``SampleInputError`` fails alone; out of memory retries the batch at half the
    size (for the rest of the unit); a lost device raises ``DeviceLostError``; anything else raises.
    """
    inputs = inputs or {}
    worker = f"{socket.gethostname()}:{os.getpid()}"
    results: dict[str, Result] = {s.sample_id: inputs[s.sample_id] for s in samples  # type: ignore[misc]
                                  if isinstance(inputs.get(s.sample_id), str)}
    ms: dict[str, float] = {sid: 0.0 for sid in results}
    bs = batch_size
    events: list[dict[str, object]] = []
    queue = deque(batches([s for s in samples if s.sample_id not in results], bs))
    while queue:
        batch = queue.popleft()
        if len(batch) > bs:  # after an OOM: the rest of the unit at the smaller size
            queue.extendleft(reversed([batch[i:i + bs] for i in range(0, len(batch), bs)]))
            continue
        t0 = time.perf_counter()
        try:
            images = _call(backend, batch, inputs, bs if pad else None)
        except SampleInputError as e:
            bad = [s for s in batch if s.sample_id in e.sample_ids] or (batch if len(batch) == 1 else [])
            for s in bad:
                results[s.sample_id], ms[s.sample_id] = f"{type(e).__name__}: {e}"[:500], 0.0
            rest = [s for s in batch if s not in bad]
            # without ids, each sample alone finds the culprit(s)
            queue.extendleft(reversed([rest] if bad else [[s] for s in rest]))
            continue
        except Exception as e:
            if is_oom(e) and bs > 1:
                release_memory()
                events.append({"oom_at_batch_size": bs, "retry_batch_size": max(1, bs // 2),
                               "first_sample": batch[0].sample_id})
                bs = max(1, bs // 2)
                queue.appendleft(batch)
                continue
            if is_device_lost(e):
                raise DeviceLostError(f"{type(e).__name__}: {e}") from e
            raise
        per = (time.perf_counter() - t0) * 1000 / len(batch)
        for s, img in zip(batch, images):
            results[s.sample_id], ms[s.sample_id] = img, per
    rows = []
    for s in samples:
        r = results[s.sample_id]
        ok = not isinstance(r, str)
        rows.append({**{k: v for k, v in s.to_dict().items() if k in PIXEL_SCHEMA.names},
                     "attributes": sorted(s.attributes.items()),
                     "pixels": pixels_to_bytes(r) if ok else None,
                     "pixels_shape": list(r.shape) if ok else None,
                     "gen_ms": ms[s.sample_id], "gen_worker": worker, "error": None if ok else r})
    table = pa.Table.from_pylist(rows, schema=PIXEL_SCHEMA)
    table = with_meta(table, "synthgen.generate", {"batch_size": batch_size, "final_batch_size": bs,
                                                  "pad_to_batch_size": pad, "oom_retries": events})
    return with_meta(table, "synthgen.generator", backend.info)
