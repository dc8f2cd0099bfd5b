"""The bad-input corpus (tests/data/bad/cases.yaml): each input gives its exact error, exit code 2,
and nothing written at the output URL (a local folder, and a real S3 bucket for a sample)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app

from .conftest import job_dict, write_job

BAD = Path(__file__).parent / "data" / "bad"
CASES = yaml.safe_load((BAD / "cases.yaml").read_text())


def _check(res, file: Path, expected: list[str]) -> None:
    assert res.exit_code == 2, res.output
    for e in expected:
        assert e.format(file=file) in res.output, res.output


@pytest.mark.parametrize("name", sorted(CASES["manifests"]))
def test_bad_manifest(name, tmp_path, monkeypatch, tiny_models):
    monkeypatch.chdir(tmp_path)
    file = BAD / name
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_models, "out/ds", manifest={"path": str(file)}))
    _check(CliRunner().invoke(app, ["run", str(job)]), file, CASES["manifests"][name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


@pytest.mark.parametrize("name", sorted(CASES["jobs"]))
def test_bad_job_spec(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    file = BAD / name
    _check(CliRunner().invoke(app, ["run", str(file)]), file, CASES["jobs"][name])
    assert list(tmp_path.iterdir()) == []  # no output, and the unsafe YAML tag ran nothing


def test_corpus_is_large_enough():
    assert len(CASES["manifests"]) + len(CASES["jobs"]) >= 20


def test_bad_manifest_writes_nothing_to_the_bucket(s3, tiny_models, tmp_path):
    import s3fs

    from .s3env import make_bucket, storage_options

    make_bucket(s3, "clean")
    file = BAD / "duplicate_ids.parquet"
    spec = job_dict(tiny_models, "s3://clean/ds", manifest={"path": str(file)},
                    output={"url": "s3://clean/ds", "storage_options": storage_options(s3)})
    _check(CliRunner().invoke(app, ["run", str(write_job(tmp_path / "job.yaml", spec))]), file,
           CASES["manifests"]["duplicate_ids.parquet"])
    assert s3fs.S3FileSystem(endpoint_url=s3, skip_instance_cache=True).find("clean") == []
