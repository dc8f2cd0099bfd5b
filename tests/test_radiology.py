"""The radiology job end to end (procedural phantoms, so it is fast and the findings are known):
finding QC decisions, DICOM files that the standard's validator accepts, listed and verified."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
import yaml

from pipelines.config import load_job
from pipelines.execution.runner import run
from pipelines.publish.verify import verify

from .conftest import ROOT, resolve_job_clip
from .test_dicom import KNOWN_DICTIONARY_GAP


def _job(tmp_path: Path, **generator) -> Path:
    spec = yaml.safe_load((ROOT / "jobs" / "radiology.yaml").read_text())
    for grid in spec["manifest"]["template"]:
        grid["num_images"], grid["seeds"] = 2, grid["seeds"][:1]
    spec["generator"] |= generator
    resolve_job_clip(spec)
    spec["output"]["url"] = str(tmp_path / "out")
    spec["unit_size"] = 4
    path = tmp_path / "radiology.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory, ray_cluster) -> Path:
    tmp = tmp_path_factory.mktemp("radiology")
    spec = load_job(_job(tmp, backend="procedural", model="toyworld-procedural"))
    run(spec, quiet=True)
    return tmp / "out"


def test_qc_agrees_on_drawn_findings_and_its_scores_are_decisions(published):
    summary = json.loads((published / "curation.json").read_text())
    agree = summary["qc"]["agreement"]
    # the procedural renderer draws exactly what the prompt names: the judge agrees on presence and side
    assert agree["nodule"]["rate"] == 1.0 and agree["nodule_side"]["rate"] == 1.0
    # 4 nodule grids x 2 images + 2 normal images: the laterality confusion matrix is diagonal
    assert summary["qc"]["confusion"]["nodule_side"] == {"left": {"left": 4}, "right": {"right": 4},
                                                         "none": {"none": 2}}
    dec = pq.read_table(published / "decisions.parquet").to_pylist()
    assert len(dec) == 10 and all(dict(r["qc_pred"] or {}).get("nodule") for r in dec)
    assert not any(r for d in dec for r in (d["reasons"] or []) if r in ("qc:nodule", "qc:nodule_side"))


def test_dicom_files_validate_and_are_listed(published):
    problems, index = verify(str(published), {})
    assert not problems
    listed = sorted(k for s in index["shards"] for k in s["files"] if k.startswith("dicom/"))
    on_disk = sorted(str(p.relative_to(published)) for p in (published / "dicom").rglob("*.dcm"))
    assert listed == on_disk and len(listed) == index["counts"]["kept"] > 0
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (Debian package dicom3tools) is missing: `make test` installs it"
    sops = set()
    for key in listed:
        res = subprocess.run([exe, str(published / key)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines()
                  if ln.startswith("Error") and not ln.startswith(KNOWN_DICTIONARY_GAP)]
        assert not errors, f"{key}: {errors}"
        ds = pydicom.dcmread(io.BytesIO((published / key).read_bytes()))
        assert ds[0x0008, 0x001C].value == "YES" and ds.ConversionType == "SYN"
        sops.add(ds.SOPInstanceUID)
    assert len(sops) == len(listed)


def test_report_has_the_finding_qc_section(published):
    report = json.loads((published / "report.json").read_text())
    q = report["finding_qc"]
    assert q["available"] and q["classifier"] == "pipelines.toyworld.judge:judge"
    side = q["confusion"]["nodule_side"]
    assert side["stated"] == side["read"] == ["left", "none", "right"]
    assert side["counts"] == [[4, 0, 0], [0, 2, 0], [0, 0, 4]]
    html = (published / "report.html").read_text()
    assert "Finding QC" in html and "nodule_side: stated (rows) vs read (columns)" in html
