"""Bad input: a clear error naming file, row and field; exit code 2; nothing written."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.cli import app

from .conftest import job_dict, write_job

GOOD = {"prompt_id": ["a", "b", "c"], "prompt": ["a red circle", "a blue square", "x"], "seed": [1, 2, 3]}


def _run(tmp_path: Path, models: Path, table: pa.Table, cmd: str = "run", **over):
    mpath = tmp_path / "bad.parquet"
    pq.write_table(table, mpath)
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", job_dict(models, str(out), manifest={"path": str(mpath)}, **over))
    res = CliRunner().invoke(app, [cmd, str(job)])
    return res, mpath, out


CASES = {
    "missing column": (lambda d: {k: v for k, v in d.items() if k != "seed"}, "column 'seed'", None),
    "wrong type": (lambda d: {**d, "seed": ["1", "2", "3"]}, "column 'seed': wrong type", None),
    "null prompt": (lambda d: {**d, "prompt": ["ok", None, "x"]}, "field 'prompt'", "row 1"),
    "empty prompt": (lambda d: {**d, "prompt": ["ok", "x", "  "]}, "field 'prompt'", "row 2"),
    "duplicate id": (lambda d: {**d, "prompt_id": ["a", "b", "a"]}, "field 'prompt_id': duplicate 'a'", "row 2"),
    "negative seed": (lambda d: {**d, "seed": [1, -5, 3]}, "field 'seed'", "row 1"),
    "unsafe id": (lambda d: {**d, "prompt_id": ["a", "../etc", "c"]}, "field 'prompt_id'", "row 1"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("cmd", ["run", "validate"])
def test_bad_manifest(tmp_path, tiny_models, case, cmd):
    mutate, field, row = CASES[case]
    res, mpath, out = _run(tmp_path, tiny_models, pa.table(mutate(dict(GOOD))), cmd)
    assert res.exit_code == 2, res.output
    assert str(mpath) in res.output and field in res.output
    if row:
        assert row in res.output
    assert not out.exists()


def test_unknown_job_key(tmp_path, tiny_models):
    spec = job_dict(tiny_models, str(tmp_path / "out"))
    spec["generator"]["stepz"] = 3
    job = write_job(tmp_path / "job.yaml", spec)
    res = CliRunner().invoke(app, ["run", str(job)])
    assert res.exit_code == 2
    assert "job.yaml" in res.output and "generator.stepz" in res.output and "unknown key" in res.output
    assert not (tmp_path / "out").exists()


def test_good_manifest_validates_and_copies(tmp_path, tiny_models):
    res, mpath, out = _run(tmp_path, tiny_models, pa.table(GOOD), "validate")
    assert res.exit_code == 0 and "3 prompts" in res.output
    job = tmp_path / "job.yaml"
    res = CliRunner().invoke(app, ["manifest", str(job), "--out", str(tmp_path / "m.parquet")])
    assert res.exit_code == 0, res.output
    t = pq.read_table(tmp_path / "m.parquet")
    assert t.column("prompt_id").to_pylist() == ["a", "b", "c"] and t.column("num_images").to_pylist() == [1, 1, 1]
