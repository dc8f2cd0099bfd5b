"""Quotas end to end on the toy world (procedural renderer, toy CLIP, the judge as QC): every group ends
at exactly its quota or is declared unachievable with a reason; rounds resume, reproduce and are
no-ops once published."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.config import load_job
from pipelines.execution.runner import run
from pipelines.publish.verify import verify

from .conftest import ROOT

QUOTA = 12
GROUPS = [(c, s) for c in ("red", "blue") for s in ("circle", "square")]


def _manifest(path: Path) -> Path:
    rows = [{"prompt_id": f"{c}-{s}", "prompt": f"a {c} {s}", "seed": 100 * i, "num_images": 4,
             "attributes": [("colour", c), ("shape", s)]} for i, (c, s) in enumerate(GROUPS)]
    # a row whose prompt can never produce its group: the judge (QC) sees a circle where it says square
    rows.append({"prompt_id": "green-liar", "prompt": "a green circle", "seed": 900, "num_images": 4,
                 "attributes": [("colour", "green"), ("shape", "square")]})
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("prompt_id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()), ("num_images", pa.int64()),
        ("attributes", pa.map_(pa.string(), pa.string()))]))
    pq.write_table(table, path)
    return path


def _job(tmp: Path, out: str, keep_staging: bool = False, **targets) -> Path:
    assets = ROOT / "pipelines" / "toyworld" / "assets" / "clip"
    spec = {
        "name": "quota", "manifest": {"path": str(_manifest(tmp / "manifest.parquet"))},
        "generator": {"backend": "procedural", "model": "toyworld-procedural", "height": 32, "width": 32,
                      "batch_size": 16},
        "clip": {"model": "toy-clip", "pretrained": str(assets / "toy-clip.safetensors"),
                 "model_config_file": str(assets / "toy-clip.json"), "tokenizer": str(assets / "tokenizer")},
        "unit_size": 4,
        "resources": {"generate": {"size": 1, "num_cpus": 0.5, "torch_threads": 1},
                      "embed": {"size": 1, "num_cpus": 0.25, "torch_threads": 1}},
        "curation": {"dedup": {"exact": True},
                     "qc": {"attributes": ["colour", "shape"], "classifier": "pipelines.toyworld.judge:judge"},
                     "targets": {"per_group": QUOTA, "group_by": ["colour", "shape"], "max_rounds": 5, **targets}},
        "provenance": {"c2pa": {"enabled": False}, "watermark": {"enabled": False}},
        "output": {"url": out, "shard_max_samples": 20, "keep_staging": keep_staging},
    }
    path = tmp / f"{Path(out).name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def first(tmp_path_factory, ray_cluster) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("quota")
    out = tmp / "a"
    res = run(load_job(_job(tmp, str(out), keep_staging=True)), quiet=True)
    return out, res


def _targets(out: Path) -> dict:
    return json.loads((out / "curation.json").read_text())["targets"]


def test_every_group_ends_at_its_quota_or_is_declared_unachievable(first):
    out, res = first
    t = _targets(out)
    by = {g["group"]: g for g in t["groups"]}
    for c, s in GROUPS:
        g = by[f"colour={c},shape={s}"]
        assert g["status"] == "met" and g["published"] == QUOTA, g
        assert g["generated"] > 4 and g["rounds"] >= 2  # 4 per row in the manifest: the quota needed a round
        assert g["cost"] == pytest.approx(g["generated"] / QUOTA)
    liar = by["colour=green,shape=square"]
    assert liar["status"] == "unachievable" and liar["published"] == 0 and liar["acceptance"] == 0.0
    assert "acceptance 0.000" in liar["reason"] and liar["rejected"] == {"qc": liar["generated"]}
    assert liar["rounds"] < 5 + 1  # declared after min_tries, not looped on until max_rounds
    assert t["met"] == 4 and t["unachievable"] == 1 and len(t["rounds"]) >= 1
    assert res.counts["kept"] == 4 * QUOTA
    dec = pq.read_table(out / "decisions.parquet").to_pylist() if (out / "decisions.parquet").exists() else \
        pq.read_table(out / "decisions").to_pylist()
    ids = [d["sample_id"] for d in dec]
    assert len(ids) == len(set(ids)) == t["generated"]  # later rounds continue each row's index
    surplus = [d for d in dec if "quota_surplus" in (d["reasons"] or [])]
    assert all(d["stage"] == "quota" for d in surplus)
    assert sum(d["kept"] for d in dec) == 4 * QUOTA
    problems, index = verify(str(out), {})
    assert not problems and index["counts"]["kept"] == 4 * QUOTA
    report = json.loads((out / "report.json").read_text())["quota"]
    assert [g["group"] for g in report["groups"]] == [g["group"] for g in t["groups"]]
    assert report["unachievable"] == 1 and 'id="quota"' in (out / "report.html").read_text()


def test_cli_summary_prints_the_per_group_table(first):
    from pipelines.cli import _quota_lines

    _, res = first
    lines = _quota_lines(res.extra["targets"])
    assert "4 groups met, 1 unachievable" in lines[0]
    row = next(ln for ln in lines if "colour=green,shape=square" in ln)
    assert "unachievable (acceptance 0.000" in row


def test_a_rerun_is_a_no_op(first, tmp_path):
    out, _ = first
    again = run(load_job(_job(tmp_path, str(out), keep_staging=True)), quiet=True)
    assert again.already_published and again.units_generated == 0


def test_killed_mid_round_resumes_without_redoing_staged_units_and_gives_the_same_dataset(first, tmp_path):
    out, full = first
    index = json.loads((out / "index.json").read_text())
    targets = _targets(out)
    staging = next((out / "_staging").iterdir())
    round_units = sorted(p for p in (staging / "units").iterdir() if p.name.startswith("r01"))
    assert len(round_units) >= 2
    for p in round_units[len(round_units) // 2:]:  # killed half way through round 1: nothing published yet
        p.unlink()
    (out / "index.json").unlink()
    resumed = run(load_job(_job(tmp_path, str(out), keep_staging=True)), quiet=True)
    assert resumed.units_generated == len(round_units) - len(round_units) // 2
    assert resumed.units_reused == full.units_generated - resumed.units_generated
    assert json.loads((out / "index.json").read_text())["shards"] == index["shards"]  # byte-identical shards
    assert _targets(out) == targets
