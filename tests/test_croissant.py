"""Croissant-RAI metadata of a real published dataset (tiny models, real Ray): it validates with
mlcroissant, its record sets read back the published samples and decisions, it is in the index, and
the same run's images carry valid C2PA manifests that agree with their records."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import JobSpec
from pipelines.execution.runner import run
from pipelines.generate.encode import COMPOSITE_SOURCE_TYPE, DIGITAL_SOURCE_TYPE, digital_source_type
from pipelines.publish import c2pa, croissant

from .conftest import job_dict


@pytest.fixture(scope="module")
def published(tiny_models, ray_cluster, tmp_path_factory):
    """Two prompts: text to image, and img2img from a toy-world render (a composite with an ingredient)."""
    from PIL import Image

    from pipelines.toyworld import world

    tmp = tmp_path_factory.mktemp("croissant")
    init = tmp / "init.png"
    Image.fromarray(world.render(world.sample_attributes(np.random.default_rng(0), domain="shapes"), 1)).save(init)
    manifest = tmp / "m.parquet"
    pq.write_table(pa.table({"prompt_id": ["plain", "edit"], "prompt": ["a red circle", "a blue circle"],
                             "seed": [3, 4], "num_images": [2, 2], "init_image": [None, str(init)]}), manifest)
    out = tmp / "ds"
    spec = job_dict(tiny_models, str(out), manifest={"path": str(manifest)},
                    curation={"bias": {"attributes": {"colour": {"red": "a red shape", "blue": "a blue shape"}},
                                       "bootstrap": 20}})
    res = run(JobSpec.model_validate(spec), quiet=True)
    return res, out


def test_croissant_validates_and_is_listed_in_the_index(published):
    _, out = published
    proc = subprocess.run([sys.executable, "-m", "mlcroissant", "validate", "--jsonld", str(out / croissant.CROISSANT)],
                          capture_output=True, text=True)
    if "No module named mlcroissant.__main__" in proc.stderr:  # the console script, from the same venv
        proc = subprocess.run([str(Path(sys.executable).parent / "mlcroissant"), "validate", "--jsonld",
                               str(out / croissant.CROISSANT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "error" not in proc.stderr.lower().replace("0 error", "")
    index = json.loads((out / "index.json").read_text())
    data = (out / croissant.CROISSANT).read_bytes()
    assert index["files"][croissant.CROISSANT] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_records_read_back_the_published_samples_and_decisions(published):
    import mlcroissant as mlc

    res, out = published
    ds = mlc.Dataset(jsonld=str(out / croissant.CROISSANT))
    samples = list(ds.records(record_set="samples"))
    ids = sorted(r["samples/sample_id"].decode() for r in samples)
    table = pq.read_table(sorted(str(p) for p in (out / "shards").glob("*.parquet")))
    assert ids == sorted(table.column("sample_id").to_pylist()) and len(ids) == res.counts["kept"] == 4
    for r in samples:
        rec = json.loads(r["samples/record"])
        assert rec["sample_id"] == r["samples/sample_id"].decode()
        assert r["samples/png"].size == (rec["image"]["width"], rec["image"]["height"])
    decisions = list(ds.records(record_set="decisions"))
    assert len(decisions) == res.counts["planned"] and all(d["decisions/kept"] for d in decisions)


def test_rai_fields_come_from_the_run(published):
    _, out = published
    doc = json.loads((out / croissant.CROISSANT).read_text())
    assert "Synthetic" in doc["rai:dataCollection"] and "weights sha256" in doc["rai:dataCollection"]
    biases = doc["rai:dataBiases"] if isinstance(doc["rai:dataBiases"], list) else [doc["rai:dataBiases"]]
    assert any("perceived colour" in b for b in biases)  # the bias audit's findings
    assert doc["rai:personalSensitiveInformation"].startswith("None")
    assert {d["@id"] for d in doc["distribution"]} >= {"decisions-files", "webdataset-shards", "parquet-shards"}


def test_published_pngs_carry_valid_manifests_matching_their_records(published):
    import io
    import tarfile

    res, out = published
    seen = 0
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            files = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for name, png in files.items():
            if not name.endswith(".png"):
                continue
            rec = json.loads(files[name[:-4] + ".json"])
            got = c2pa.read_manifest(png)
            assert got["state"] == "Valid" and got["failures"] == []
            assert got["manifest"]["label"] == rec["ai_generated"]["c2pa"]["manifest"]
            sample = c2pa.assertion(got["manifest"], "org.synthgen.sample")
            assert sample["sample_id"] == rec["sample_id"] and sample["fingerprint"] == res.fingerprint
            (action,) = c2pa.actions(got["manifest"])
            assert action["parameters"]["weights_sha256"] == rec["generator"]["weights_sha256"]
            edit = rec["prompt_id"] == "edit"  # img2img: a composite, its input named as an ingredient
            assert action["digitalSourceType"] == rec["ai_generated"]["digital_source_type"] == digital_source_type(
                png) == (COMPOSITE_SOURCE_TYPE if edit else DIGITAL_SOURCE_TYPE)
            assert [i["title"] for i in got["manifest"].get("ingredients", [])] == (["init_image: init.png"] if edit
                                                                                    else [])
            assert rec["ai_generated"]["watermark"]["payload"] is None  # 32 px: below the watermark's minimum
            seen += 1
    assert seen == 4
    prov = (out / "provenance.json").read_text()
    assert "PRIVATE KEY" not in prov and '"key"' not in json.dumps(json.loads(prov)["job_spec"]["provenance"])
    assert json.loads(prov)["labels"]["c2pa"]["signer"]["development_chain"] is True


def test_radiology_says_synthetic_no_patient_data():
    spec = SimpleNamespace(name="rad", description="", output=SimpleNamespace(formats=["parquet"]))
    doc = croissant.build(spec=spec, fingerprint="f", counts={"prompts": 1, "planned": 1, "kept": 1},
                          generator={"model": "m"}, clip={"model": "c"},
                          decisions_schema=pa.schema([("sample_id", pa.string()), ("kept", pa.bool_())]),
                          decisions_glob="decisions.parquet", curation=None, medical=True, labels={})
    assert "Synthetic, no patient data" in doc["rai:personalSensitiveInformation"]


def test_verify_images_checks_every_manifest_and_its_trust(published, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    _, out = published
    r = CliRunner().invoke(app, ["verify", str(out), "--images"])
    assert r.exit_code == 0 and "4 images: C2PA manifests valid" in r.output, r.output
    root = c2pa.dev_chain().cert.replace("chain.pem", "root.pem")
    r = CliRunner().invoke(app, ["verify", str(out), "--images", "--trust-anchor", root])
    assert r.exit_code == 0 and "valid, trusted" in r.output, r.output
    other = c2pa.dev_chain(tmp_path / "other")  # a root that signed none of them
    r = CliRunner().invoke(app, ["verify", str(out), "--images", "--trust-anchor",
                                 other.cert.replace("chain.pem", "root.pem")])
    assert r.exit_code == 1 and r.output.count("untrusted") == 4
