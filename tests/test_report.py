"""The audit report on a real pipeline run (tiny models through Ray): published with the dataset,
rebuilt by ``synthgen report`` with a reference set, deterministic, and robust to absent inputs."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.report import metrics as M
from pipelines.report import build as R
from pipelines.report import plots as P
from pipelines.io.store import Store
from pipelines.toyworld.reference import build_toyworld_reference

from .conftest import job_dict

SECTIONS = ("summary", "groups", "alignment", "diversity", "reference", "safety", "curation", "methods")


def published_dataset(tmp_path_factory, tiny_models) -> Path:
    """One real run per test session, shared by the report test modules (built on first use)."""
    from pipelines.config import JobSpec
    from pipelines.execution.runner import run

    out = tmp_path_factory.getbasetemp() / "report-dataset" / "ds"
    if not (out / "index.json").exists():
        spec = job_dict(tiny_models, str(out), manifest={"template": {
            "template": "a {colour} {shape}", "slots": {"colour": ["red", "blue"], "shape": ["circle", "square"]},
            "seeds": [7], "num_images": 8}})
        run(JobSpec.model_validate(spec), quiet=True)
    return out


def toy_reference(tmp_path_factory, ds: Path) -> str:
    out = tmp_path_factory.getbasetemp() / "report-dataset" / "ref"
    if not (out / "reference.parquet").exists():
        clip = json.loads((ds / "provenance.json").read_text())["job_spec"]["clip"]
        build_toyworld_reference(str(out), clip, n=120, seed=1)
    return str(out)


@pytest.fixture(scope="module")
def ds(tmp_path_factory, tiny_models, ray_cluster) -> Path:
    return published_dataset(tmp_path_factory, tiny_models)


@pytest.fixture(scope="module")
def ref(tmp_path_factory, ds) -> str:
    return toy_reference(tmp_path_factory, ds)


def test_publish_writes_report_listed_in_index(ds):
    index = json.loads((ds / "index.json").read_text())
    for key in ("report.html", "report.json"):
        data = (ds / key).read_bytes()
        assert index["files"][key] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    rep = json.loads((ds / "report.json").read_text())
    assert rep["format"] == "synthgen-report" and rep["summary"]["published_samples"] == 32
    assert rep["groups"]["count"] == 4
    for row in rep["groups"]["rows"]:
        assert row["kept"] == row["planned"] == 8 and len(row["grid"]) == R.GRID_PER_GROUP
        assert row["vendi"]["n"] == 8 and 1.0 <= row["vendi"]["score"] <= 8.0
    cs = rep["alignment"]["clipscore"]
    assert cs["overall"]["n"] == 32 and cs["max_abs_diff_records_vs_embeddings"] < 1e-3
    assert rep["alignment"]["judge"]["available"] and rep["alignment"]["judge"]["judged"] == 32
    assert not rep["reference"]["available"] and "--reference" in rep["reference"]["note"]
    assert not rep["safety"]["available"]
    assert rep["curation"]["available"] == (ds / "curation.json").exists()
    html = (ds / "report.html").read_text()
    for sid in SECTIONS:
        assert f'id="{sid}"' in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # nothing fetched


def test_report_json_is_deterministic(ds):
    """The same dataset gives byte-identical report.json: publish-time (index in memory) and rebuilt."""
    rebuilt, _ = R.build_report(Store(str(ds)))
    assert R.report_bytes(rebuilt, "")[0] == (ds / "report.json").read_bytes()


def test_cli_report_with_reference(ds, ref, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path / "r" / "audit.html"
    res = CliRunner().invoke(app, ["report", str(ds), "--reference", ref, "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r" / "audit.json").read_text())
    r = rep["reference"]
    assert r["available"] and r["same_clip_as_dataset"] and r["n_reference"] == 120 and r["n_generated"] == 32
    assert r["cmmd"]["n_generated"] == 32 and r["cmmd"]["n_reference"] == 120 and r["cmmd"]["sigma"] == 10.0
    assert r["fd"]["n_per_side"] == 32 and not r["fd"]["at_fixed_size"] and r["fd"]["value"] >= 0
    assert set(r["prdc"]) >= {"precision", "recall", "density", "coverage"} and r["prdc"]["k"] == 5
    mem = r["memorisation"]
    assert mem["top1"]["n"] == 32 and len(mem["closest_pairs"]) == R.CLOSEST_PAIRS
    sims = [p["cosine"] for p in mem["closest_pairs"]]
    assert sims == sorted(sims, reverse=True)
    html = out.read_text()
    assert html.count('class="pair"') == R.CLOSEST_PAIRS
    # the same reference twice: same JSON
    again, _ = R.build_report(Store(str(ds)), ref)
    assert R.report_bytes(again, "")[0] == (tmp_path / "r" / "audit.json").read_bytes()
    # a bad reference is an error on the CLI
    bad = CliRunner().invoke(app, ["report", str(ds), "--reference", str(tmp_path / "nothing-here")])
    assert bad.exit_code == 2 and "reference" in bad.output


def test_reference_metrics_see_a_copy(ds, tmp_path):
    """A reference made of the dataset's own embeddings: every sample is memorised (cosine 1)."""
    t = pq.read_table([str(p) for p in sorted((ds / "embeddings").glob("*.parquet"))])
    pq.write_table(t, tmp_path / "self.parquet")
    rep, _ = R.build_report(Store(str(ds)), str(tmp_path / "self.parquet"))
    r = rep["reference"]
    assert r["memorisation"]["flagged"] == 32 and r["memorisation"]["top1"]["min"] == pytest.approx(1.0, abs=1e-5)
    assert r["fd"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert r["prdc"]["precision"] == 1.0 and r["prdc"]["coverage"] == 1.0


def test_image_folder_reference_is_embedded_with_the_dataset_clip(ds, tmp_path):
    from pipelines.toyworld import world

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(world.render(world.sample_attributes(rng), i)).save(folder / f"{i:03d}.png")
    rep, html = R.build_report(Store(str(ds)), str(folder))
    r = rep["reference"]
    assert r["available"] and r["kind"] == "images" and r["n_reference"] == 12 and r["same_clip_as_dataset"]
    assert "cmmd" in r and "prdc" in r


def test_tar_only_dataset_gives_the_same_numbers(ds):
    """Datasets published as webdataset only (no Parquet shards) are read from the tars."""
    index = json.loads((ds / "index.json").read_text())
    for s in index["shards"]:
        s["files"] = {k: v for k, v in s["files"].items() if not (k.startswith("shards/") and k.endswith(".parquet"))}
    from_tar, _ = R.build_report(Store(str(ds)), index=index)
    from_parquet, _ = R.build_report(Store(str(ds)))
    assert from_tar == from_parquet


def test_memory_filesystem_url(ds):
    """Everything goes through fsspec: the same dataset under memory:// gives the same report."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for f in ds.rglob("*"):
        if f.is_file():
            fs.pipe_file(f"/report-mem/{f.relative_to(ds).as_posix()}", f.read_bytes())
    rep, _ = R.build_report(Store("memory://report-mem"))
    assert R.report_bytes(rep, "")[0] == (ds / "report.json").read_bytes()
    fs.rm("/report-mem", recursive=True)


def _copy(ds: Path, dst: Path) -> Path:
    shutil.copytree(ds, dst)
    return dst


def test_absent_inputs_are_reported_not_fatal(ds, tmp_path):
    d = _copy(ds, tmp_path / "bare")
    for name in ("decisions.parquet", "timings.parquet", "manifest.parquet", "provenance.json"):
        if (d / name).is_dir():  # decisions and timings are folders of parts written by the workers
            shutil.rmtree(d / name)
        else:
            (d / name).unlink()
    shutil.rmtree(d / "embeddings")
    index = json.loads((d / "index.json").read_text())
    for s in index["shards"]:
        s["files"] = {k: v for k, v in s["files"].items() if not k.startswith("embeddings/")}
    rep, html = R.build_report(Store(str(d)), index=index)
    assert rep["summary"]["published_samples"] == 32
    assert not rep["diversity"]["vendi"]["available"] and "note" in rep["diversity"]["duplicates"]
    assert rep["alignment"]["judge"]["clip_zero_shot"]["available"] is False
    assert not rep["safety"]["available"]
    for sid in SECTIONS:
        assert f'id="{sid}"' in html
    with pytest.raises(R.ReportError, match="index.json"):
        R.build_report(Store(str(tmp_path / "nowhere")))


def _write_decisions(d: Path, table: pa.Table) -> None:
    """Replace a dataset's decisions, in whichever layout it has (one file, or a folder of parts)."""
    p = d / "decisions.parquet"
    if p.is_dir():
        parts = sorted(p.glob("*.parquet"))
        for q in parts[1:]:
            q.unlink()
        pq.write_table(table, parts[0])
    else:
        pq.write_table(table, p)


def _audit(groups, colour_counts):
    return [{"group": g, "attribute": "colour", "values": ["blue", "red"], "n": sum(c), "counts": list(c),
             "p": [x / max(sum(c), 1) for x in c], "p_ci": [[0.0, 1.0], [0.0, 1.0]], "metrics": {}}
            for g, c in zip(groups, colour_counts)]


def test_curation_outputs_are_read(ds, tmp_path):
    """decisions.parquet and curation.json in the layout curation writes: map columns of scores and labels,
    a flags list, per-stage survivors with their bias audit; all of it lands in the report."""
    d = _copy(ds, tmp_path / "curated")
    dec = pq.read_table(d / "decisions.parquet")
    n = dec.num_rows
    ids = dec.column("sample_id").to_pylist()
    rng = np.random.default_rng(3)
    kept = [i % 8 != 0 for i in range(n)]  # one rejection per group (published shards are not touched)
    reasons = [[] if k else ["semantic_duplicate"] for k in kept]
    flags = [[] for _ in range(n)]
    flags[1] = ["unsafe:triangle"]  # kept with a flag (safety in report mode)
    colours = ["red" if ("red" in s) == (i % 3 > 0) else "blue" for i, s in enumerate(ids)]
    f32map, strmap = pa.map_(pa.string(), pa.float32()), pa.map_(pa.string(), pa.string())
    table = pa.table({
        "sample_id": ids, "prompt_id": dec.column("prompt_id"), "kept": kept,
        "reasons": pa.array(reasons, pa.list_(pa.string())), "flags": pa.array(flags, pa.list_(pa.string())),
        "stage": [None if k else "semantic_dedup" for k in kept], "clip_score": dec.column("clip_score"),
        "pixel_sha256": ["x"] * n, "sem_cluster": pa.array([0] * n, pa.int32()),
        "sem_nn_cos": pa.array(rng.random(n), pa.float32()),
        "ref_top1_cos": pa.array([[("protected", float(x))] for x in rng.random(n)], f32map),
        "safety_scores": pa.array([[("triangle", float(x)), ("nsfw", float(y))] for x, y in rng.random((n, 2))],
                                  f32map),
        "attr_probs": pa.array([[("colour=red", 0.6), ("colour=blue", 0.4)]] * n, f32map),
        "attr_labels": pa.array([[("colour", c)] for c in colours], strmap),
        "group": ["g"] * n,
    })
    _write_decisions(d, table)
    groups = ["colour=blue,shape=circle", "colour=red,shape=circle"]
    (d / "curation.json").write_text(json.dumps({
        "version": 1, "counts": {"planned": n, "kept": n - 4},
        "safety": {"mode": "report", "concepts": [{"name": "triangle", "threshold": 0.3, "flagged": 1}]},
        "stages": [{"stage": "generated", "remaining": n, "removed": 0, "audit": _audit(groups, [(6, 2), (2, 6)])},
                   {"stage": "exact_dedup", "remaining": n, "removed": 0, "audit": _audit(groups, [(6, 2), (2, 6)])},
                   {"stage": "semantic_dedup", "remaining": n - 4, "removed": 4,
                    "audit": _audit(groups, [(6, 1), (1, 6)])}]}))
    rep, html = R.build_report(Store(str(d)))
    assert rep["summary"]["rejections"] == {"semantic_duplicate": 4}
    assert rep["summary"]["flags_on_kept"] == {"unsafe:triangle": 1}
    assert rep["diversity"]["duplicates"]["rejected_by_method"]["semantic_duplicate"]["count"] == 4
    assert "sem_nn_cos" in rep["diversity"]["duplicates"]["similarity_scores"]
    sf = rep["safety"]
    assert set(sf["scores"]) == {"safety_scores.nsfw", "safety_scores.triangle"} and sf["flagged"] == 1
    assert sf["flagged_kept"] == 1 and sf["thresholds"]["safety_scores.triangle"] == 0.3 and sf["mode"] == "report"
    assert rep["reference"]["curation_reference_top1"]["ref_top1_cos.protected"]["n"] == n
    assert "attr_labels.colour" in rep["groups"]["perceived_source"] and "judge" in rep["groups"]["perceived_source"]
    row = next(r for r in rep["groups"]["rows"] if r["group"] == "colour=red,shape=circle")
    want = [c for c, s in zip(colours, ids) if s.startswith("p-red-circle")]
    assert row["perceived"]["before"]["colour"]["red"]["count"] == want.count("red")
    kept_red = [c for c, s, k in zip(colours, ids, kept) if s.startswith("p-red-circle") and k]
    assert row["perceived"]["after"]["colour"]["red"]["count"] == kept_red.count("red")
    assert row["perceived"]["judge"]["domain"]["unknown"]["count"] == 8  # tiny random models draw noise
    u = row["perceived"]["uniformity"]["before"]["colour"]  # beside the shares: is this group skewed at all?
    assert u["categories"] == ["blue", "red"] and u["vocabulary"] == "curation.json"
    assert u["p_value"] == pytest.approx(M.uniformity_test([want.count("blue"), want.count("red")])["p_value"],
                                         rel=1e-5) and u["skewed"] == (u["p_value"] < 0.05)
    cur = rep["curation"]
    assert [s["stage"] for s in cur["stages"]] == ["generated", "exact_dedup", "semantic_dedup"]
    last = cur["filters"][-1]
    assert last["filter"] == "semantic_dedup" and last["before_stage"] == "exact_dedup" and last["removed"] == 4
    assert last["attributes"]["colour"]["red"] == {"before": 0.5, "after": 0.5}
    assert cur["per_group"]["colour=blue,shape=circle"]["colour"]["after"]["p"] == pytest.approx([6 / 7, 1 / 7], abs=1e-6)
    assert "Show 1 flagged thumbnail" in html and "semantic_dedup" in html.split('id="curation"')[1]


def test_non_finite_embeddings_name_the_samples_instead_of_numbers(ds, tmp_path):
    """One NaN embedding used to give PRDC coverage 0.0 for the whole set; now the metrics are not
    computed and the report names the sample."""
    d = _copy(ds, tmp_path / "nan")
    f = sorted((d / "embeddings").glob("*.parquet"))[0]
    t = pq.read_table(f)
    emb = t.column("image_emb").to_pylist()
    bad = t.column("sample_id")[2].as_py()
    emb[2] = [float("nan")] * len(emb[2])
    pq.write_table(t.set_column(t.column_names.index("image_emb"), "image_emb",
                                pa.array(emb, t.schema.field("image_emb").type)), f)
    pq.write_table(pq.read_table([str(p) for p in sorted((ds / "embeddings").glob("*.parquet"))]),
                   tmp_path / "ref.parquet")  # a finite reference
    rep, html = R.build_report(Store(str(d)), str(tmp_path / "ref.parquet"))
    r = rep["reference"]
    assert not r["available"] and "prdc" not in r and "cmmd" not in r
    assert r["non_finite_samples"] == {"image_emb": [bad]}
    assert "non-finite values (NaN or inf)" in r["note"]
    assert f"non-finite values in samples {bad} (image_emb)" in r["note"]
    v = rep["diversity"]["vendi"]
    assert not v["available"] and v["non_finite_samples"] == [bad] and "overall" not in v
    said = f"non-finite values in samples {bad} (image_emb)"
    for section in ("diversity", "reference"):
        assert said in html.split(f'<section id="{section}"')[1].split("</section>")[0], section


def test_other_curation_json_layouts_are_read_generically(ds, tmp_path):
    d = _copy(ds, tmp_path / "generic")
    (d / "curation.json").write_text(json.dumps({"filters": [
        {"name": "clip_threshold", "before": {"colour": {"red": {"share": 0.5}, "blue": {"share": 0.5}}},
         "after": {"colour": {"red": {"share": 0.6}, "blue": {"share": 0.4}}}},
        {"name": "dedup", "before": {"red": 16, "blue": 16}, "after": {"red": 14, "blue": 16}}]}))
    rep, html = R.build_report(Store(str(d)))
    cur = {f["filter"]: f["attributes"] for f in rep["curation"]["filters"]}
    assert cur["clip_threshold"]["colour"]["red"] == {"before": 0.5, "after": 0.6}
    assert cur["dedup"]["value"]["red"] == {"before": 0.5, "after": pytest.approx(14 / 30, abs=1e-6)}
    (d / "curation.json").write_text(json.dumps({"something": "else"}))
    rep, html = R.build_report(Store(str(d)))
    assert rep["curation"]["available"] and "understands" in rep["curation"]["note"]


def test_deterministic_choice_and_thumbnails():
    ids = [f"s{i:03d}" for i in range(50)]
    a = R._select(list(range(50)), ids, "grid", 8)
    assert a == R._select(list(reversed(range(50))), ids, "grid", 8) and len(a) == 8
    big = io.BytesIO()
    Image.new("RGB", (512, 256), (200, 10, 10)).save(big, format="PNG")
    uri = R._png_thumb(big.getvalue())
    import base64

    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(im.size) == R.THUMB_MAX


def test_plots_survive_empty_and_nan_inputs(monkeypatch):
    """A prompt group whose samples were all rejected has no Vendi score, no CLIPScores: plots skip it."""
    plt = R._plt()
    assert R._bar_h(plt, {"empty group": float("nan"), "g": 2.0, "none": None}, "t", "x").startswith("data:image/png")
    assert R._bar_h(plt, {"empty group": float("nan")}, "t", "x") is None
    assert R._hist(plt, [("a", np.array([np.nan, 0.5, 0.7]), "#000000")], "t", "x", 0.9).startswith("data:")
    assert R._hist(plt, [("a", np.array([np.nan]), "#000000")], "t", "x") is None
    assert R._rates_plot(plt, {"a": {"n": 0, "rate": None, "lo": None, "hi": None}}, "t") is None
    # a group curation emptied: no sample anywhere, nothing to draw
    p = {"after": {"colour": M.proportions_ci([], ["red", "blue"])}, "judge": {}}
    assert R._group_attr_plot(plt, p) is None
    # samples before curation, none after: the "before" bars only (no NaN bars), with the test in the title
    p = {"before": {"colour": M.proportions_ci(["red"] * 9 + ["blue"], ["red", "blue"])},
         "after": {"colour": M.proportions_ci([], ["red", "blue"])},
         "uniformity": {"before": {"colour": M.uniformity_test([9, 1])}}}
    drawn, real_bar = [], plt.Axes.bar

    def bar(ax, x, h, *a, **k):
        drawn.append((k.get("label"), [float(v) for v in h]))
        return real_bar(ax, x, h, *a, **k)

    monkeypatch.setattr(plt.Axes, "bar", bar)
    assert R._group_attr_plot(plt, p).startswith("data:image/png")
    assert drawn == [("before curation", [0.1, 0.9])]
    assert P._uniformity_note(p, "colour") == "\nbefore: skewed, p = 0.011"


def test_bounded_samples_say_how_many_rows_they_used(ds, ref, monkeypatch):
    """Beyond its sample sizes the report keeps exact counts and means, computes quantiles, Vendi and the
    reference metrics on the deterministic samples, and says how many rows each used (sizes shrunk here so
    the 32-sample dataset exceeds them; shards decoded 3 samples at a time)."""
    from pipelines.report import data, decisions, scan

    full, _ = R.build_report(Store(str(ds)), ref)
    monkeypatch.setattr(scan, "iter_shard", lambda store, shard: data.iter_shard(store, shard, rows=3))
    for mod in (scan, decisions):
        monkeypatch.setattr(mod, "SCORE_SAMPLE", 10)
        monkeypatch.setattr(mod, "GROUP_SCORE_SAMPLE", 3)
    monkeypatch.setattr(scan, "DIST_SAMPLE", 12)
    monkeypatch.setattr(scan, "EMB_PER_GROUP", 4)
    rep, html = R.build_report(Store(str(ds)), ref)
    cs, was = rep["alignment"]["clipscore"]["overall"], full["alignment"]["clipscore"]["overall"]
    assert cs["n"] == 32 and cs["quantiles_sample"] == 10 and cs["mean_ci"] == "normal approximation"
    assert cs["mean"] == pytest.approx(was["mean"], rel=1e-5) and (cs["min"], cs["max"]) == (was["min"], was["max"])
    assert rep["alignment"]["clipscore"]["per_group"]["colour=blue,shape=circle"]["quantiles_sample"] == 3
    v = rep["diversity"]["vendi"]
    assert v["overall"]["n"] == 32 and v["overall"]["n_used"] == 12 and 1.0 <= v["overall"]["score"] <= 12.0
    assert all(g["n"] == 8 and g["n_used"] == 4 for g in v["per_group"].values())
    assert rep["diversity"]["duplicates"]["residual_near_duplicates"]["n_used"] == 16
    r = rep["reference"]
    assert r["n_generated"] == 32 and r["cmmd"]["n_generated"] == 12 and r["prdc"]["n_generated"] == 12
    assert r["memorisation"]["top1"]["n"] == 32 and r["memorisation"]["flagged"] == full["reference"]["memorisation"]["flagged"]
    assert r["memorisation"]["closest_pairs"] == full["reference"]["memorisation"]["closest_pairs"]  # all rows seen
    assert [g["grid"] for g in rep["groups"]["rows"]] == [g["grid"] for g in full["groups"]["rows"]]
    assert rep["settings"]["bounded_samples"]["selection"] == "lowest sha256 of the sample id"
    again, _ = R.build_report(Store(str(ds)), ref)
    assert R.report_bytes(again, "")[0] == R.report_bytes(rep, "")[0]  # still deterministic
