"""Curation through the CLI on real runs of the pipeline (tiny models): the whole stack, the
decisions table read back with pyarrow, curation.json, planted duplicates mixed into a generated
run, and dedup across runs and against protected reference sets."""

from __future__ import annotations

import glob
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from pipelines.curation import curate, single
from pipelines.cli import app
from pipelines.config import JobSpec
from pipelines.curation.dedup.hashes import perceptual_hash
from pipelines.generate.encode import pixel_sha256
from pipelines.contracts.unit import LIGHT_COLUMNS, Staging
from pipelines.io.store import Store

from .conftest import job_dict, write_job

FULL_STACK = {
    "dedup": {"exact": True, "perceptual": {"enabled": True, "max_distance": 6},
              "semantic": {"enabled": True, "eps": 0.001, "cluster_size": 8}, "keep": "best_clip"},
    "safety": {"mode": "report", "concepts": [{"name": "triangle", "prompts": ["a triangle"], "threshold": 0.9}]},
    "min_clip_score": 8.5,  # the tiny models score 3.5-26.7 here: removes the 3 lowest (all below 7.6)
    "bias": {"attributes": {"colour": {"red": "a red shape", "blue": ["a blue shape", "something blue"]}},
             "group_by": ["shape"], "bootstrap": 200},
    "rebalance": {"attribute": "colour", "target": "uniform"},
}


def _cli_run(tmp: Path, spec: dict) -> None:
    job = write_job(tmp / f"{spec['name']}.yaml", spec)
    res = CliRunner().invoke(app, ["run", str(job), "--quiet"])
    assert res.exit_code == 0, res.output


PROMPTS = [("red", "circle", 100), ("blue", "circle", 200), ("red", "square", 300), ("blue", "square", 400)]


def _manifest(path: Path, prompts: list[tuple[str, str, int]]) -> str:
    """Distinct seeds per prompt (the tiny random model's images depend on the seed far more than
    on the prompt, so prompts sharing seeds would be near-duplicates of each other)."""
    pq.write_table(pa.Table.from_pylist([
        {"prompt_id": f"{c}-{s.replace(' ', '-')}", "prompt": f"a {c} {s}", "seed": seed, "num_images": 6,
         "attributes": [("colour", c), ("shape", s)]} for c, s, seed in prompts],
        schema=pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()),
                          ("num_images", pa.int64()), ("attributes", pa.map_(pa.string(), pa.string()))])), path)
    return str(path)


@pytest.fixture(scope="module")
def run_a(tiny_models, ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cur_a")
    out = tmp / "a"
    manifest = _manifest(tmp / "a.parquet", PROMPTS + [("red", "forbidden square", 500)])
    spec = job_dict(tiny_models, str(out), manifest={"path": manifest}, curation=FULL_STACK,
                    screen={"terms": ["forbidden"]}, output={"url": str(out), "shard_max_samples": 10,
                                                             "keep_staging": True})
    spec["name"] = "a"
    _cli_run(tmp, spec)
    return out, JobSpec.model_validate(spec)


def test_decisions_table_has_one_row_per_planned_sample(run_a):
    out, spec = run_a
    dec = pq.read_table(out / "decisions.parquet")
    assert dec.schema.equals(curate.DECISIONS_SCHEMA)
    rows = dec.to_pylist()
    assert len(rows) == 30 and len({r["sample_id"] for r in rows}) == 30  # 5 prompts x 6
    screened = [r for r in rows if r["stage"] == "prompt_screen"]
    assert len(screened) == 6 and all(r["reasons"] == ["prompt_screen:term:forbidden"] and not r["kept"]
                                       for r in screened)
    generated = [r for r in rows if r["stage"] != "prompt_screen"]
    for r in generated:
        assert r["kept"] == (not r["reasons"])
        assert len(r["phash"]) == 16 and len(r["pixel_sha256"]) == 64
        assert set(dict(r["safety_scores"])) == {"triangle"}
        probs = dict(r["attr_probs"])
        assert set(probs) == {"colour=red", "colour=blue"} and sum(probs.values()) == pytest.approx(1, abs=1e-5)
        assert dict(r["attr_labels"])["colour"] in ("red", "blue") and r["group"].startswith("shape=")
        assert r["sem_cluster"] is not None and r["sem_nn"] is not None
    index = json.loads((out / "index.json").read_text())
    assert index["counts"]["kept"] == sum(r["kept"] for r in rows) > 0
    assert "curation.json" in index["files"]


def test_the_clip_score_floor_removes_exactly_the_samples_below_it(run_a):
    out, spec = run_a
    floor = spec.curation.min_clip_score
    rows = [r for r in pq.read_table(out / "decisions.parquet").to_pylist() if r["clip_score"] is not None]
    low = sorted(r["sample_id"] for r in rows if r["clip_score"] < floor)
    assert 0 < len(low) < len(rows), sorted((r["clip_score"], r["sample_id"]) for r in rows)
    assert sorted(r["sample_id"] for r in rows if "low_clip_score" in r["reasons"]) == low
    for r in rows:
        if r["sample_id"] in low:
            assert not r["kept"] and r["stage"] == "clip_score"
    cur = json.loads((out / "curation.json").read_text())
    stage = next(s for s in cur["stages"] if s["stage"] == "clip_score")
    assert stage["removed"] == len(low) and cur["reasons"]["low_clip_score"] == len(low)
    published = set(pq.read_table(sorted(glob.glob(str(out / "shards" / "*.parquet"))), columns=["sample_id"])
                    .column("sample_id").to_pylist())
    assert published and not published & set(low)


def test_curation_json_records_every_stage_and_audit(run_a):
    out, spec = run_a
    cur = json.loads((out / "curation.json").read_text())
    assert [s["stage"] for s in cur["stages"]] == ["generated", "clip_score", "exact_dedup", "perceptual_dedup",
                                                  "semantic_dedup", "rebalance"]
    assert cur["counts"]["planned"] == 30 and cur["counts"]["screened"] == 6 and cur["counts"]["generated"] == 24
    remaining = [s["remaining"] for s in cur["stages"]]
    assert remaining[0] == 24 and remaining == sorted(remaining, reverse=True)
    assert remaining[-1] == cur["counts"]["kept"]
    for stage in cur["stages"]:
        groups = {a["group"] for a in stage["audit"]}
        assert groups <= {"shape=circle", "shape=square"}
        for a in stage["audit"]:
            assert a["attribute"] == "colour" and sorted(a["values"]) == ["blue", "red"]
            assert a["n"] == sum(a["counts"])
            if a["n"]:
                assert set(a["metrics"]) == {"mad", "max_dev", "entropy", "entropy_norm", "kl_uniform"}
                assert all(lo <= p <= hi for p, (lo, hi) in zip(a["p"], a["p_ci"]))
                u = a["uniformity"]  # beside the deviations: is the group skewed at all?
                assert u["alpha"] == 0.05 and u["n"] == a["n"] and u["skewed"] == (u["p_value"] < 0.05)
    groups = {g["group"]: g for g in cur["rebalance"]["groups"]}
    for a in cur["stages"][-1]["audit"]:  # rebalanced to uniform within each group, where possible
        g = groups[a["group"]]
        assert a["counts"] == g["after"]
        if g["unachievable"]:  # a value the group lacks: the target is renormalised over the others
            assert all(g["before"][a["values"].index(v)] == 0 for v in g["unachievable"])
        else:
            assert a["counts"][0] == a["counts"][1] == min(g["before"])
    assert cur["rebalance"]["attribute"] == "colour" and cur["safety"]["mode"] == "report"
    assert cur["settings"] == spec.curation.model_dump()


def test_records_carry_the_decision(run_a):
    out, _ = run_a
    dec = {r["sample_id"]: r for r in pq.read_table(out / "decisions.parquet").to_pylist()}
    n = 0
    for s in wds.WebDataset(sorted(glob.glob(str(out / "shards" / "*.tar"))), shardshuffle=False, empty_check=False):
        rec = json.loads(s["json"])
        assert rec["curation"]["kept"] and dec[rec["sample_id"]]["kept"]
        assert rec["curation"]["flags"] == dec[rec["sample_id"]]["flags"]
        n += 1
    assert n == sum(r["kept"] for r in dec.values())


# ------------------------------------------------------------------ planted duplicates, one run
def _light_with_images(out: Path, spec: JobSpec) -> tuple[pa.Table, list[np.ndarray]]:
    from pipelines.execution.runner import prepare

    prep = prepare(spec)
    staging = Staging(Store(str(out)), prep.fingerprint)
    table = pa.concat_tables([staging.read_unit(u.unit_id) for u in prep.units])
    images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in table.column("png").to_pylist()]
    return table.select(LIGHT_COLUMNS), images


def _jpeg(x: np.ndarray, q: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _png_roundtrip(x: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG", compress_level=1)  # other bytes, same pixels
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


PLANTS = {  # kind -> (how the copy is made, the method that must catch it)
    "exact copy": (lambda x, r: x.copy(), "exact_duplicate"),
    "re-encoded PNG": (lambda x, r: _png_roundtrip(x), "exact_duplicate"),
    "JPEG q90": (lambda x, r: _jpeg(x, 90), "perceptual_duplicate"),
    "noised": (lambda x, r: np.clip(x + r.normal(0, 3, x.shape), 0, 255).astype(np.uint8), "perceptual_duplicate"),
    "shifted 1px": (lambda x, r: np.pad(x, ((0, 0), (1, 0), (0, 0)), mode="edge")[:, : x.shape[1]],
                    "perceptual_duplicate"),
    "brightened": (lambda x, r: np.clip(x.astype(int) + 6, 0, 255).astype(np.uint8), "perceptual_duplicate"),
    # The bundled CLIPs cannot embed a pHash-evading image variant near its source (the tiny one is
    # random, the toy one is position-sensitive, as its world demands), so a semantic near-copy is
    # planted as a mirrored image carrying the source's embedding at cosine ~0.9999: what a
    # mirror-invariant encoder would give. pHash of a mirrored image is far from the source's.
    "semantic near-copy": (lambda x, r: x[::-1, ::-1].copy(), "semantic_duplicate"),
}


def test_planted_duplicates_are_caught_by_the_right_method(run_a, tiny_models):
    """Copies of generated images, each kind planted 4 times into the run's own staged units (the
    originals are 24 distinct generated images): precision and recall of each method on the planted
    set must be >= 0.99, and no original may be dropped."""
    from pipelines.embed.clip import ClipEmbedder

    out, spec = run_a
    light, images = _light_with_images(out, spec)
    n = light.num_rows
    rng = np.random.default_rng(0)
    embedder = ClipEmbedder(spec.clip)
    rows, expect = [], {}
    for kind, (make, method) in PLANTS.items():
        for src in rng.choice(n, 4, replace=False):
            img = make(images[src], rng)
            sid = f"planted-{kind.replace(' ', '-')}-{src}"
            emb = embedder.image_embeddings([Image.fromarray(img)])[0]
            if method == "semantic_duplicate":
                e = np.asarray(light.column("image_emb")[int(src)].as_py()) + rng.normal(0, 2e-3, len(emb))
                emb = e / np.linalg.norm(e)
            rows.append({**{c: light.column(c)[int(src)].as_py() for c in LIGHT_COLUMNS}, "sample_id": sid,
                         "pixel_sha256": pixel_sha256(img), "phash": perceptual_hash(img),
                         "image_emb": emb.tolist(), "clip_score": 0.0})  # worst score: never the copy kept
            expect[sid] = method
    light = pa.concat_tables([light, pa.Table.from_pylist(rows, schema=light.schema)])
    cfg = {"dedup": {"perceptual": {"enabled": True, "max_distance": 12},
                     "semantic": {"enabled": True, "eps": 0.002, "cluster_size": 16}, "keep": "best_clip"}}
    spec2 = JobSpec.model_validate({**spec.model_dump(), "curation": cfg})
    dec = single.decide(light, spec2, []).to_pylist()
    for method in ("exact_duplicate", "perceptual_duplicate", "semantic_duplicate"):
        flagged = {r["sample_id"] for r in dec if method in r["reasons"]}
        planted = {s for s, m in expect.items() if m == method}
        tp = len(flagged & planted)
        precision, recall = tp / max(len(flagged), 1), tp / len(planted)
        print(f"{method}: precision {precision:.3f} recall {recall:.3f} ({tp}/{len(planted)} planted)")
        assert precision >= 0.99 and recall >= 0.99, (method, flagged ^ planted)
    kept_ids = {r["sample_id"] for r in dec if r["kept"]}
    assert kept_ids == {r["sample_id"] for r in dec[:n] if r["kept"]}  # every original kept
    by_id = {r["sample_id"]: r for r in dec}
    for sid in expect:
        assert by_id[sid]["dup_of"] in kept_ids


# ------------------------------------------------------------- across runs and reference sets
def test_second_run_drops_duplicates_of_the_first_and_of_references(run_a, tiny_models, tmp_path):
    out_a, _ = run_a
    ref_imgs = tmp_path / "protected"
    ref_imgs.mkdir()
    kept_a = {}
    for s in wds.WebDataset(sorted(glob.glob(str(out_a / "shards" / "*.tar"))), shardshuffle=False,
                            empty_check=False):
        kept_a[s["__key__"]] = s["png"]
    for key in sorted(kept_a)[:3]:  # a protected set: three of A's published images, as image files
        (ref_imgs / f"{key}.png").write_bytes(kept_a[key])
    out_b = tmp_path / "b"
    manifest = _manifest(tmp_path / "b.parquet", PROMPTS + [("green", "circle", 600), ("green", "square", 700)])
    spec = job_dict(tiny_models, str(out_b), manifest={"path": manifest}, curation={
        "dedup": {"perceptual": {"enabled": True, "max_distance": 6}},
        "prior_datasets": [{"url": str(out_a)}],
        "references": [{"name": "protected", "url": str(ref_imgs), "threshold": 0.9999},
                       {"name": "a-embeddings", "url": str(out_a / "embeddings"), "threshold": 0.9999,
                        "action": "report"}],
    })
    spec["name"] = "b"
    _cli_run(tmp_path, spec)
    dec = {r["sample_id"]: r for r in pq.read_table(out_b / "decisions.parquet").to_pylist()}
    dec_a = {r["sample_id"]: r for r in pq.read_table(out_a / "decisions.parquet").to_pylist()}
    # A published its kept samples; one A dropped as a duplicate of a kept one has a twin there too
    twin_in_a = {s for s, r in dec_a.items() if s in kept_a or r["dup_of"] in kept_a}
    assert len(dec) == 36
    protected = {p.name.removesuffix(".png") for p in ref_imgs.iterdir()}
    for sid, r in dec.items():
        prior = any(x.startswith("duplicate_of_prior:") for x in r["reasons"])
        assert prior == (sid in twin_in_a), (sid, r["reasons"])
        if sid in kept_a:
            assert r["prior_match"] == f"a/{sid}" and r["prior_top1_cos"] == pytest.approx(1.0, abs=1e-4)
            assert "reference_match:a-embeddings" in r["flags"]  # report mode: a flag, not a reason
        assert set(dict(r["ref_top1_cos"])) == {"protected", "a-embeddings"}
        if sid in protected:
            assert "reference_match:protected" in r["reasons"]
            assert dict(r["ref_top1_id"])["protected"] == f"{sid}.png"
            assert dict(r["ref_phash_distance"])["protected"] == 0
        if "reference_match:protected" in r["reasons"] or "reference_match:a-embeddings" in r["flags"]:
            assert sid in twin_in_a
    greens = [r for s, r in dec.items() if "green" in s]
    assert greens and not any(x.startswith(("duplicate_of_prior", "reference_match")) for r in greens
                              for x in r["reasons"] + r["flags"])  # new content is not matched
    cur = json.loads((out_b / "curation.json").read_text())
    refs = {r["name"]: r for r in cur["references"]}
    assert refs["protected"]["flagged"] >= 3 and refs["protected"]["kind"] == "images"
    assert refs["protected"]["size"] == 3 and refs["a-embeddings"]["size"] == len(kept_a)
    assert sum(refs["a-embeddings"]["histogram"]["counts"]) == 36
    assert cur["prior_datasets"][0]["matched"] == len(twin_in_a) and cur["prior_datasets"][0]["samples"] == len(kept_a)
