"""Counterfactual pairs and outpainting through the real pipeline (jobs/counterfactual.yaml, toy
diffusion and toy CLIP): each edit keeps every pixel outside its mask, is QC'd like any sample, and
says in its C2PA manifest what it was made from. Whether the toy model draws (or erases) the nodule
is measured, not asserted: that is the model's skill, not the pipeline's."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config import GeneratorSpec, load_job
from pipelines.execution.runner import run
from pipelines.generate.edits import named_region_mask
from pipelines.toyworld import counterfactual as cf

from .conftest import ROOT

TOY = ROOT / "pipelines" / "toyworld" / "assets"


def _job(tmp: Path, num_images: int) -> Path:
    """The shipped job, inputs rendered under ``tmp`` (absolute image paths), 4 samples a unit."""
    from pipelines.toyworld.measure_counterfactual import job_copy

    return job_copy(tmp, num_images, unit_size=4)


def _published(out: Path) -> dict[str, tuple[np.ndarray, dict, bytes]]:
    """sample_id -> (pixels, record, PNG bytes) of every published WebDataset sample."""
    found: dict[str, dict[str, bytes]] = {}
    for tar in sorted(out.rglob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.rsplit(".", 1)
                found.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return {k: (np.asarray(Image.open(io.BytesIO(v["png"])).convert("RGB")), json.loads(v["json"]), v["png"])
            for k, v in found.items()}


@pytest.fixture(scope="module")
def published(tmp_path_factory, ray_cluster) -> Path:
    tmp = tmp_path_factory.mktemp("counterfactual")
    run(load_job(_job(tmp, num_images=4)), quiet=True)
    return tmp / "out"


def test_the_committed_example_is_what_the_toy_world_renders():
    folder = ROOT / "jobs" / "counterfactual"
    for name, img in cf.phantoms().items():
        assert np.array_equal(np.asarray(Image.open(folder / f"{name}.png")), img)
    rows = pq.read_table(folder / "manifest.parquet").to_pylist()
    assert [r["prompt_id"] for r in rows] == [r["prompt_id"] for r in cf.manifest_rows("jobs/counterfactual")]
    assert {r["init_image"] for r in rows} == {"jobs/counterfactual/normal.png", "jobs/counterfactual/nodule.png"}
    normal, nodule = cf.phantoms().values()  # a pair: the same phantom but for the nodule
    differ = (normal != nodule).any(axis=2)
    assert 0 < differ.sum() and not (differ & ~(named_region_mask("left_lung", 32, 32) > 0)).any()


def test_edits_keep_every_pixel_outside_the_region(published):
    got = _published(published)
    before = cf.phantoms()
    region = named_region_mask("left_lung", 32, 32) > 0
    pairs = {"add-nodule-left": before["normal"], "remove-nodule-left": before["nodule"]}
    seen = 0
    for sid, (img, rec, _) in got.items():
        if rec["prompt_id"] not in pairs:
            continue
        init = pairs[rec["prompt_id"]]
        assert img.shape == init.shape
        assert np.array_equal(img[~region], init[~region]), sid  # byte-identical outside the mask
        assert (img[region] != init[region]).any(), sid  # the region was redrawn
        assert rec["ai_generated"]["digital_source_type"].endswith("compositeWithTrainedAlgorithmicMedia")
        seen += 1
    assert seen == 8


def test_counterfactual_samples_are_qcd_and_in_the_decisions_table(published):
    from pipelines.toyworld.judge import judge

    dec = {r["sample_id"]: r for r in pq.read_table(published / "decisions.parquet").to_pylist()}
    assert len(dec) == 9 and all(d["kept"] for d in dec.values())  # qc mode report: flagged, kept
    edits = {sid: d for sid, d in dec.items() if not sid.startswith("outpaint")}
    assert len(edits) == 8
    for sid, d in edits.items():
        assert dict(d["qc_pred"] or {}).get("nodule") in ("present", "absent"), sid
    summary = json.loads((published / "curation.json").read_text())["qc"]
    assert summary["agreement"]["nodule"]["n"] == 8  # the outpaint rows state no finding
    # the QC prediction is the judge's reading of the published pixels
    for sid, (img, rec, _) in _published(published).items():
        if sid in edits:
            assert dict(dec[sid]["qc_pred"])["nodule"] == judge(img)["nodule"]


def test_c2pa_names_the_input_and_the_edit(published):
    from pipelines.publish import c2pa

    kinds = {}
    for sid, (_, rec, png) in _published(published).items():
        got = c2pa.read_manifest(png)
        assert got["state"] == "Valid", sid
        m = got["manifest"]
        sample = c2pa.assertion(m, "org.synthgen.sample")
        kinds[rec["prompt_id"]] = ([i["title"] for i in m["ingredients"]], sample["edit"])
    assert kinds == {"add-nodule-left": (["init_image: normal.png"], {"mask_region": "left_lung"}),
                     "remove-nodule-left": (["init_image: nodule.png"], {"mask_region": "left_lung"}),
                     "outpaint-normal": (["init_image: normal.png"], {"outpaint": "8"})}


def test_outpainting_pads_the_image_and_keeps_it_in_the_centre(published):
    got = [(img, rec) for img, rec, _ in _published(published).values() if rec["prompt_id"] == "outpaint-normal"]
    assert len(got) == 1
    for img, rec in got:
        assert img.shape == (48, 48, 3) and rec["image"]["height"] == rec["image"]["width"] == 48
        assert np.array_equal(img[8:40, 8:40], cf.phantoms()["normal"])
        assert (img[:8] != img[8:9]).any()  # the padding was painted, not left as the edge fill


def test_outpainting_is_deterministic_for_a_seed_and_any_padding(tmp_path):
    from pipelines.generate.backends import load_backend
    from pipelines.generate.inputs import sample_inputs
    from pipelines.plan.samples import Sample

    normal = cf.phantoms()["normal"]
    Image.fromarray(normal).save(tmp_path / "normal.png")
    backend = load_backend(GeneratorSpec(model=str(TOY / "diffusion"), steps=4, guidance_scale=4.0))

    def make(seed: int) -> np.ndarray:  # left, top, right, bottom: 4, 8, 4, 0 -> 40 x 40 output
        s = Sample(f"s{seed}", "p", 0, "chest radiograph with no nodule", None, seed, 4, 4.0, 40, 40, {},
                   init_image=str(tmp_path / "normal.png"), outpaint="4,8,4,0")
        return backend.generate([s], [sample_inputs(s)])[0]

    a, b, c = make(5), make(5), make(6)
    assert a.shape == (40, 40, 3) and a.tobytes() == b.tobytes()
    assert np.array_equal(a[8:40, 4:36], normal) and np.array_equal(c[8:40, 4:36], normal)
    assert not np.array_equal(a, c)


def test_the_edit_rate_measurement_reads_the_qc_column(tmp_path):
    """`python -m pipelines.toyworld.measure_counterfactual` (the figures the job and README quote): its job
    copy is the shipped job at the asked strength, and its rates count the judge's readings per direction."""
    from pipelines.toyworld import measure_counterfactual as m

    spec = load_job(m.job_copy(tmp_path, 2, 0.5, formats=["webdataset"]))
    assert spec.generator.strength == 0.5 and spec.output.formats == ["webdataset"] and spec.curation.qc is not None
    left_small = [("nodule", "present"), ("nodule_side", "left"), ("nodule_size", "small")]
    rows = [{"prompt_id": "add-nodule-left", "qc_pred": left_small},
            {"prompt_id": "add-nodule-left", "qc_pred": [("nodule", "present"), ("nodule_side", "right")]},
            {"prompt_id": "remove-nodule-left", "qc_pred": [("nodule", "absent")]},
            {"prompt_id": "remove-nodule-left", "qc_pred": None},
            {"prompt_id": "outpaint-normal", "qc_pred": [("nodule", "absent")]}]
    assert m.rates(rows) == {"added": 0.5, "added_large": 0.0, "removed": 0.5, "n_per_direction": 2}
