"""Manifests are read whatever wrote them (pandas, polars, pyarrow) and normalised once into the
canonical table, so equal content gives equal hashes, fingerprints and samples; wrong content
(fractions for integers, non-finite numbers, non-string attributes) is still rejected by row and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.config import load_job
from pipelines.errors import ManifestError, SpecError
from pipelines.plan import manifest as mf

from .conftest import job_dict, write_job

ENC = Path(__file__).parent / "data" / "encodings"
ROWS: list[dict[str, Any]] = json.loads((ENC / "rows.json").read_text())
PAIR = pa.struct([("key", pa.string()), ("value", pa.string())])


def _canonical_file(path: Path) -> Path:
    """The manifest as ``synthgen manifest`` writes it: the canonical schema (map attributes)."""
    pq.write_table(mf.to_canonical([dict(r) for r in ROWS]), path)
    return path


@pytest.fixture()
def expected(tmp_path) -> pa.Table:
    return mf.read_manifest(str(_canonical_file(tmp_path / "canonical.parquet")))


def _same(path: Path, expected: pa.Table) -> None:
    got = mf.read_manifest(str(path))
    assert got.schema == mf.CANONICAL
    assert got.equals(expected), (got.to_pylist(), expected.to_pylist())
    assert mf.content_hash(got) == mf.content_hash(expected)


def _columns(**over: Any) -> dict[str, Any]:
    cols = {f: [r.get(f) for r in ROWS] for f in ("prompt_id", "prompt", "negative_prompt", "seed", "num_images",
                                                  "steps", "guidance_scale", "height", "width")}
    return {**cols, **over}


def test_pandas_rewrite_is_accepted_as_the_same_manifest(tmp_path, expected):
    df = pd.read_parquet(_canonical_file(tmp_path / "a.parquet"))
    df.to_parquet(tmp_path / "b.parquet")  # all-null int columns become double, the map a list of lists
    schema = pq.read_schema(tmp_path / "b.parquet")
    assert schema.field("width").type == pa.float64() and pa.types.is_list(schema.field("attributes").type)
    _same(tmp_path / "b.parquet", expected)


def test_pandas_filtered_frame_with_categoricals(tmp_path):
    """A filtered frame stores its index as a column; categoricals are dictionary-encoded."""
    df = pd.read_parquet(_canonical_file(tmp_path / "a.parquet"))
    df = df[df["prompt_id"] != ROWS[1]["prompt_id"]]  # index 0, 2, 3: not a range
    df["prompt"] = df["prompt"].astype("category")
    df.to_parquet(tmp_path / "b.parquet")
    schema = pq.read_schema(tmp_path / "b.parquet")
    assert "__index_level_0__" in schema.names and pa.types.is_dictionary(schema.field("prompt").type)
    _same(tmp_path / "b.parquet", mf.to_canonical([dict(r) for i, r in enumerate(ROWS) if i != 1]))


ATTRS = [r.get("attributes") for r in ROWS]
KEYS = sorted({k for a in ATTRS if a for k in a})
ENCODINGS = {
    "map": pa.array([list(a.items()) if a else None for a in ATTRS], pa.map_(pa.string(), pa.string())),
    "map_large_string": pa.array([list(a.items()) if a else None for a in ATTRS],
                                 pa.map_(pa.large_string(), pa.large_string())),
    "struct": pa.array([{k: a.get(k) for k in KEYS} if a else None for a in ATTRS],
                       pa.struct([(k, pa.string()) for k in KEYS])),
    "list_of_key_value_structs": pa.array([[{"key": k, "value": v} for k, v in a.items()] if a else []
                                           for a in ATTRS], pa.list_(PAIR)),
    "list_of_pairs": pa.array([[[k, v] for k, v in a.items()] if a else None for a in ATTRS],
                              pa.large_list(pa.list_(pa.string()))),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_attribute_encodings(tmp_path, expected, encoding):
    pq.write_table(pa.table({**_columns(), "attributes": ENCODINGS[encoding]}), tmp_path / "m.parquet")
    _same(tmp_path / "m.parquet", expected)


def test_integral_floats_null_columns_and_string_encodings(tmp_path, expected):
    n = len(ROWS)
    cols = _columns(
        prompt_id=pa.array(_columns()["prompt_id"], pa.large_string()),
        prompt=pa.array(_columns()["prompt"], pa.string_view()),
        negative_prompt=pa.array(_columns()["negative_prompt"]).dictionary_encode(),
        seed=pa.array([float(r["seed"]) for r in ROWS], pa.float64()),
        steps=pa.array([r.get("steps") for r in ROWS], pa.float32()),
        height=pa.array([r.get("height") for r in ROWS], pa.uint16()),
        guidance_scale=pa.array([r.get("guidance_scale") for r in ROWS], pa.float64()),
        init_image=pa.nulls(n), mask_image=pa.nulls(n, pa.float64()),
    )
    pq.write_table(pa.table({**cols, "attributes": ENCODINGS["struct"]}), tmp_path / "m.parquet")
    _same(tmp_path / "m.parquet", expected)


@pytest.mark.parametrize("name", sorted(p.name for p in ENC.glob("polars_*.parquet")))
def test_polars_written_files(name, expected):
    """Committed files written by polars (make_polars.py): struct, list of key/value structs,
    categorical strings, large strings, a Null column and a float-encoded integer column."""
    _same(ENC / name, expected)


def test_polars_round_trip_when_installed(tmp_path, expected):
    pl = pytest.importorskip("polars")
    pl.read_parquet(_canonical_file(tmp_path / "a.parquet")).write_parquet(tmp_path / "b.parquet")
    _same(tmp_path / "b.parquet", expected)


NAN, INF = float("nan"), float("inf")
WRONG = {
    "fraction for an integer": ({"steps": [10.0, 2.5, None, None]},
                                "row 1: field 'steps': 2.5 is invalid: not an integer"),
    "nan guidance": ({"guidance_scale": [1.0, NAN, None, 2.0]}, "row 1: field 'guidance_scale': nan is not a finite"),
    "inf guidance": ({"guidance_scale": [INF, 1.0, None, 2.0]}, "row 0: field 'guidance_scale': inf is not a finite"),
    "nan in a float-encoded int": ({"height": [64.0, None, NAN, 8.0]}, "row 2: field 'height': nan is not a finite"),
    "inf seed": ({"seed": [0.0, 1.0, 2.0, -INF]}, "row 3: field 'seed': -inf is not a finite"),
    "non-string attribute value": ({"attributes": pa.array([{"age": 3}, None, None, None])},
                                   "row 0: field 'attributes.age': 3 is invalid: type 'string'"),
    "null key in a pair": ({"attributes": pa.array([None, [[None, "x"]], None, None], pa.list_(pa.list_(pa.string())))},
                           "row 1: field 'attributes': key None is not a string"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_wrong_content_is_rejected_by_row_and_field(tmp_path, case):
    over, message = WRONG[case]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table(_columns(**over)), path)
    with pytest.raises(ManifestError) as e:
        mf.read_manifest(str(path))
    assert f"{path}: {message}" in str(e.value)


@pytest.mark.parametrize(("key", "value", "loc"), [
    ("generator", {"model": "m", "guidance_scale": ".nan"}, "generator.guidance_scale"),
    ("generator", {"model": "m", "strength": "-.inf"}, "generator.strength"),
    ("curation", {"min_clip_score": ".inf"}, "curation.min_clip_score"),
    ("curation", {"bias": {"attributes": {"c": {"a": "x", "b": "y"}}},
                  "rebalance": {"attribute": "c", "target": {"a": ".nan", "b": 1}}}, "curation.rebalance.target"),
    ("resources", {"generate": {"num_cpus": ".nan"}}, "resources.generate.num_cpus"),
])
def test_non_finite_spec_numbers_are_rejected(tmp_path, key, value, loc):
    spec = {"name": "j", "manifest": {"path": "m.parquet"}, "generator": {"model": "m"},
            "clip": {"model": "c"}, "output": {"url": "out"}, key: value}
    text = yaml.safe_dump(spec).replace("'.nan'", ".nan").replace("'.inf'", ".inf").replace("'-.inf'", "-.inf")
    (tmp_path / "job.yaml").write_text(text)
    with pytest.raises(SpecError) as e:
        load_job(tmp_path / "job.yaml")
    assert f"field '{loc}" in str(e.value) and "finite number" in str(e.value)


def test_pandas_rewritten_manifest_gives_the_same_job(tmp_path, tiny_models):
    """The same job from the template, its written manifest and a pandas rewrite of it: one
    fingerprint, the same sample ids and seeds (so the same staged units and dataset)."""
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.execution.runner import prepare

    spec = load_job(write_job(tmp_path / "job.yaml", job_dict(tiny_models, str(tmp_path / "out"))))
    res = CliRunner().invoke(app, ["manifest", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "a.parquet")])
    assert res.exit_code == 0, res.output
    pd.read_parquet(tmp_path / "a.parquet").to_parquet(tmp_path / "b.parquet")
    preps = [prepare(s) for s in (spec, spec.with_overrides(manifest=str(tmp_path / "a.parquet")),
                                  spec.with_overrides(manifest=str(tmp_path / "b.parquet")))]
    assert len({(p.fingerprint, p.dataset_fingerprint, p.manifest_hash) for p in preps}) == 1
    ids = [[(s.sample_id, s.seed) for s in p.samples] for p in preps]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 24
