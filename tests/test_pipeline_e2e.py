"""End to end through real Ray on the tiny models: read back with webdataset, Ray Data, pyarrow."""

from __future__ import annotations

import glob
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipelines.contracts import schemas as contracts
from pipelines.config import JobSpec
from pipelines.generate.encode import DIGITAL_SOURCE_TYPE, digital_source_type
from pipelines.execution.runner import run
from pipelines.publish.c2pa import canonical_shard

from .conftest import job_dict


def _run(models: Path, out: Path, **over):
    return run(JobSpec.model_validate(job_dict(models, str(out), **over)), quiet=True)


@pytest.fixture(scope="module")
def first(tiny_models, ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "ds"
    res = _run(tiny_models, out)
    return res, out


def _expected_ids():
    return {f"p-{c}-{s}-s7_{i:05d}" for c in ("red", "blue") for s in ("circle", "square") for i in range(6)}


def test_webdataset_reads_every_sample_once(first):
    res, out = first
    tars = sorted(glob.glob(str(out / "shards" / "*.tar")))
    assert len(tars) == res.counts["shards"] == 3  # 24 samples, 10 per shard
    seen = []
    validator = contracts.validator(contracts.SAMPLE_RECORD)
    for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False):
        seen.append(s["__key__"])
        rec = json.loads(s["json"])
        validator.validate(rec)
        img = Image.open(io.BytesIO(s["png"]))
        img.load()
        assert img.size == (32, 32) and img.mode == "RGB"
        assert s["txt"].decode() == rec["prompt"]
        assert rec["sample_id"] == s["__key__"]
        px = np.asarray(img)
        h = hashlib.sha256(f"{px.shape}|{px.dtype}".encode()); h.update(px.tobytes())
        assert rec["image"]["pixel_sha256"] == h.hexdigest()
        assert digital_source_type(s["png"]) == DIGITAL_SOURCE_TYPE
        assert Image.open(io.BytesIO(s["png"])).info["seed"] == str(rec["seed"])
    assert len(seen) == len(set(seen)) and set(seen) == _expected_ids()


def test_ray_data_and_parquet_read_the_same_samples(first, ray_cluster):
    import ray.data

    res, out = first
    ds = ray.data.read_webdataset(str(out / "shards"), file_extensions=["tar"])
    keys = [r["__key__"] for r in ds.iter_rows()]
    assert sorted(keys) == sorted(_expected_ids())
    t = pq.read_table([str(p) for p in sorted((out / "shards").glob("*.parquet"))])
    assert sorted(t.column("sample_id").to_pylist()) == sorted(_expected_ids())
    for rec in t.column("record").to_pylist():
        contracts.validator(contracts.SAMPLE_RECORD).validate(json.loads(rec))


def test_index_is_complete_and_hashes_match(first):
    _, out = first
    index = json.loads((out / "index.json").read_text())
    assert index["counts"]["planned"] == index["counts"]["kept"] == 24
    assert sum(s["count"] for s in index["shards"]) == 24
    files = {k: v for s in index["shards"] for k, v in s["files"].items()} | index["files"]
    for key, meta in files.items():
        assert hashlib.sha256((out / key).read_bytes()).hexdigest() == meta["sha256"], key
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["models"]["generator"]["weights_sha256"] and prov["libraries"]["torch"]
    assert not (out / "_staging").exists()
    dec = pq.read_table(out / "decisions.parquet")
    assert dec.num_rows == 24 and all(dec.column("kept").to_pylist())


def test_both_generator_actors_share_the_work(first):
    _, out = first
    workers = set(pq.read_table(out / "timings.parquet").column("gen_worker").to_pylist())
    assert len(workers) == 2


def test_rerun_is_byte_identical(first, tiny_models, tmp_path):
    _, out = first
    _run(tiny_models, tmp_path / "again")
    for f in sorted(out.rglob("*")):
        rel = f.relative_to(out)
        if f.is_file() and rel.parts[0] not in ("provenance.json", "index.json", "timings.parquet", "README.md",
                                                "report.html", "report.json"):  # the report holds run times
            # signed images differ only in their C2PA salts and signatures (pipelines.publish.c2pa)
            assert canonical_shard(str(rel), (tmp_path / "again" / rel).read_bytes()) == canonical_shard(
                str(rel), f.read_bytes()), rel


def test_batch_size_changes_pixels_by_at_most_one_level(first, tiny_models, tmp_path):
    res, out = first
    res1 = _run(tiny_models, tmp_path / "bs1", generator={"batch_size": 1})
    assert res1.fingerprint != res.fingerprint

    def images(root):
        return {s["__key__"]: np.asarray(Image.open(io.BytesIO(s["png"])), dtype=np.int16)
                for s in wds.WebDataset(sorted(glob.glob(str(root / "shards" / "*.tar"))), shardshuffle=False,
                                        empty_check=False)}
    a, b = images(out), images(tmp_path / "bs1")
    assert a.keys() == b.keys()
    assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 1


def test_rerun_of_published_job_does_nothing(first, tiny_models):
    res, out = first
    again = _run(tiny_models, out)
    assert again.already_published and again.units_generated == 0


def test_clip_through_ray_equals_direct_embedding(first, tiny_models):
    from pipelines.config import ClipSpec
    from pipelines.embed.clip import ClipEmbedder, clip_score

    _, out = first
    t = pq.read_table([str(p) for p in sorted((out / "shards").glob("*.parquet"))])
    emb = pq.read_table([str(p) for p in sorted((out / "embeddings").glob("*.parquet"))])
    assert t.column("sample_id").to_pylist() == emb.column("sample_id").to_pylist()
    spec = ClipSpec.model_validate(job_dict(tiny_models, "x")["clip"])
    images = [Image.open(io.BytesIO(b)) for b in t.column("png").to_pylist()]
    prompts = t.column("prompt").to_pylist()
    ray_img = np.array(emb.column("image_emb").to_pylist(), np.float32)
    ray_txt = np.array(emb.column("text_emb").to_pylist(), np.float32)
    scores = np.array([json.loads(r)["clip"]["score"] for r in t.column("record").to_pylist()])
    for bs in (1, 7):
        e = ClipEmbedder(spec, batch_size=bs)
        img, txt = e.image_embeddings(images), e.text_embeddings(prompts)
        np.testing.assert_allclose(img, ray_img, atol=2e-5)
        np.testing.assert_allclose(txt, ray_txt, atol=2e-5)
        np.testing.assert_allclose(clip_score(img, txt), scores, atol=2e-3)
