"""``synthgen verify URL --same-as OTHER``: are two published datasets the same, as reruns must be?
(and ``--images``: does every published image carry a valid manifest of its own sample?)

Signed PNGs differ between runs in their C2PA salts and signatures (``pipelines.publish.c2pa``), so a
shard whose sha256 differs is compared in canonical form (manifest chunks removed) and each image's
claim is compared by digest. Files that record a run rather than the data (times, hosts) may differ.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

from pipelines.io.store import Store
from pipelines.publish import c2pa
from pipelines.publish.shards import INDEX

RUN_RECORDS = ("provenance.json", "README.md", "report.html", "report.json", "timings.parquet")  # times, hosts


def _files(index: dict[str, Any]) -> dict[str, str]:
    out = {k: v["sha256"] for s in index.get("shards", []) for k, v in s["files"].items()}
    out.update({k: v["sha256"] for k, v in index.get("files", {}).items()})
    return out


def _claims(data: bytes) -> dict[str, str | None]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: c2pa.claim_digest(tf.extractfile(m).read())  # type: ignore[union-attr]
                for m in tf.getmembers() if m.name.endswith(".png")}


def compare(url_a: str, url_b: str, storage_options: dict[str, Any] | None = None) -> tuple[list[str], int]:
    """(problems, shards equal only modulo C2PA signing). No problems: the same dataset."""
    a, b = Store(url_a, storage_options), Store(url_b, storage_options)
    ia, ib = json.loads(a.read_bytes(INDEX)), json.loads(b.read_bytes(INDEX))
    problems: list[str] = []
    if ia["job"] != ib["job"]:
        problems.append(f"different jobs: {ia['job']} vs {ib['job']}")
    fa, fb = _files(ia), _files(ib)
    for key in sorted(set(fa) ^ set(fb)):
        problems.append(f"{key}: only in {url_a if key in fa else url_b}")
    modulo_signing = 0
    for key in sorted(set(fa) & set(fb)):
        if fa[key] == fb[key] or key.split("/", 1)[0] in RUN_RECORDS or key in RUN_RECORDS:
            continue
        da, db = a.read_bytes(key), b.read_bytes(key)
        if c2pa.canonical_shard(key, da) != c2pa.canonical_shard(key, db):
            problems.append(f"{key}: differs")
        elif key.endswith(".tar") and _claims(da) != _claims(db):
            problems.append(f"{key}: same pixels and metadata, different C2PA claims")
        else:
            modulo_signing += 1
    return problems, modulo_signing


def check_images(url: str, storage_options: dict[str, Any] | None = None,
                 trust_anchors: str | None = None) -> tuple[list[str], int]:
    """(problems, images checked): every PNG of the WebDataset shards carries a C2PA manifest that
    validates (hash binding and signature; trust only with ``trust_anchors``) and names its own sample."""
    store = Store(url, storage_options)
    index = json.loads(store.read_bytes(INDEX))
    problems: list[str] = []
    n = 0
    for key in sorted(k for s in index.get("shards", []) for k in s["files"] if k.endswith(".tar")):
        with tarfile.open(fileobj=io.BytesIO(store.read_bytes(key))) as tf:
            for m in tf.getmembers():
                if not m.name.endswith(".png"):
                    continue
                n += 1
                got = c2pa.read_manifest(tf.extractfile(m).read(), "image/png", trust_anchors)  # type: ignore[union-attr]
                sample = c2pa.assertion(got["manifest"], "org.synthgen.sample") if got else None
                if got is None:
                    problems.append(f"{key}/{m.name}: no C2PA manifest")
                elif got["failures"] or (trust_anchors and got["state"] != "Trusted"):
                    problems.append(f"{key}/{m.name}: C2PA {got['state']}: {', '.join(got['failures']) or 'untrusted'}")
                elif (sample or {}).get("sample_id") != m.name[:-4]:
                    problems.append(f"{key}/{m.name}: manifest names sample {(sample or {}).get('sample_id')}")
    return problems, n
