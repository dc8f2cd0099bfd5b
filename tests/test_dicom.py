"""DICOM output: every file passes the standard's IOD validator, reads back, is labelled synthetic,
and is byte-identical across reruns with unique UIDs."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from pipelines.publish.dicom import SC_STORAGE, DicomContext, dicom_bytes, dicom_key, uid
from pipelines.toyworld import world

CTX = DicomContext(fingerprint="f" * 64, dataset_name="radiology", software_version="0.1.0")
# dicom3tools in Debian 12 (2022-06) predates Synthetic Data (0008,001C): its dictionary reports the
# attribute as an unknown even-group tag. That one line is the validator's dictionary age, not the file;
# every other error fails the test.
KNOWN_DICTIONARY_GAP = "Error - Attribute with an even group number is not a recognized standard attribute - (0x0008,0x001c)"


def _record(i: int, side: str) -> dict:
    return {"sample_id": f"nodule-{side}/{i:04d}", "prompt_id": f"nodule-{side}", "index": i, "seed": 100 + i,
            "prompt": f"a chest radiograph with a small nodule in the {side} lung",
            "generator": {"model": "pipelines/toyworld/assets/diffusion", "weights_sha256": "ab" * 32,
                          "steps": 15, "guidance_scale": 4.0}}


def _phantom(i: int, side: str) -> np.ndarray:
    return world.render(world.Attributes(domain="phantom", nodule_side=side, nodule_size="small"), i, 64)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    out = {}
    for s, side in enumerate(("left", "right")):
        for i in range(3):
            rec = _record(i, side)
            out[dicom_key(rec)] = dicom_bytes(_phantom(i, side), rec, CTX, series_number=s + 1)
    return out


def test_dciodvfy_accepts_every_file(files, tmp_path):
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (Debian package dicom3tools) is missing: `make test` installs it"
    for key, data in files.items():
        path = tmp_path / key.replace("/", "_")
        path.write_bytes(data)
        res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines()
                  if ln.startswith("Error") and not ln.startswith(KNOWN_DICTIONARY_GAP)]
        assert not errors, f"{key}: {errors}"


def test_labelled_synthetic_and_readable(files):
    for key, data in files.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.SOPClassUID == SC_STORAGE
        assert ds[0x0008, 0x001C].value == "YES"  # Synthetic Data
        assert ds.ConversionType == "SYN"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.BurnedInAnnotation == "NO" and ds.PatientIdentityRemoved == "YES"
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8
        purposes = [(c.CodeValue, c.CodingSchemeDesignator) for item in ds.ContributingEquipmentSequence
                    for c in item.PurposeOfReferenceCodeSequence]
        assert ("109100", "DCM") in purposes
        synth = [item for item in ds.ContributingEquipmentSequence if item.Manufacturer == "synthgen"]
        assert synth and "diffusion" in synth[0].ManufacturerModelName
        assert "seed" in ds.DerivationDescription and "sha256:" in ds.DerivationDescription
        assert ds.PatientID.startswith("SYN-") and "Synthetic" in str(ds.PatientName)
        assert not ds.get("StudyDate") and not ds.get("ContentDate")  # no wall-clock in the file
        px = ds.pixel_array
        assert px.shape == (64, 64) and px.dtype == np.uint8


def test_uids_unique_grouped_and_deterministic(files):
    sops, series = set(), {}
    studies = set()
    for key, data in files.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        sops.add(ds.SOPInstanceUID)
        studies.add(ds.StudyInstanceUID)
        series.setdefault(ds.SeriesInstanceUID, set()).add(key.split("/")[1])
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert len(ds.SOPInstanceUID) <= 64 and ds.SOPInstanceUID.startswith("2.25.")
    assert len(sops) == len(files) and len(studies) == 1
    assert sorted(len(v) for v in series.values()) == [1, 1]  # one series per prompt
    rec = _record(0, "left")
    assert dicom_bytes(_phantom(0, "left"), rec, CTX, 1) == files[dicom_key(rec)]
    other = DicomContext(fingerprint="e" * 64, dataset_name="radiology", software_version="0.1.0")
    assert pydicom.dcmread(io.BytesIO(dicom_bytes(_phantom(0, "left"), rec, other, 1))).SOPInstanceUID not in sops
    assert uid("a", "b") != uid("ab") and uid("a", "b") == uid("a", "b")
