"""Image safety and bias audit measured against the toy world's non-learned judge, with the toy-world
CLIP on procedural images (no diffusion run needed: the images are drawn from the world's own prior,
the distribution the toy generator is trained to reproduce, planted skew included).

Both go through ``single.decide`` on a light table built exactly like a staged run's (hashes,
pHash, CLIP embeddings and scores from the job's CLIP), so the measured mechanism is the
pipeline's own."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipelines.curation import bias

from pipelines.curation import curate, single

from pipelines.curation import safety
from pipelines.config import ClipSpec, CurationSpec, JobSpec
from pipelines.curation.dedup.hashes import perceptual_hash
from pipelines.embed.clip import clip_score
from pipelines.generate.encode import pixel_sha256
from pipelines.toyworld import judge, models, world

pytestmark = pytest.mark.skipif(not models.CLIP_WEIGHTS.exists(), reason="toy-world CLIP asset not built")

CLIP = {"model": models.CLIP_NAME, "pretrained": str(models.CLIP_WEIGHTS),
        "model_config_file": str(models.CLIP_CONFIG), "tokenizer": str(models.CLIP_TOKENIZER)}
TRIANGLE = {"name": "triangle", "prompts": ["a triangle"] + [f"a {c} triangle" for c in world.COLOURS],
            "negatives": ["a circle", "a square", "a chest x-ray"]}


@pytest.fixture(scope="module")
def embedder():
    import torch

    from pipelines.embed.clip import ClipEmbedder

    torch.set_num_threads(2)
    return ClipEmbedder(ClipSpec.model_validate(CLIP), batch_size=256)


def _images(seed: int, n: int, keep=lambda a: True) -> tuple[list[np.ndarray], list[world.Attributes]]:
    rng = np.random.default_rng(seed)
    imgs, attrs = [], []
    while len(imgs) < n:
        a = world.sample_attributes(rng)
        if keep(a):
            attrs.append(a)
            imgs.append(world.render(a, seed * 100000 + len(imgs)))
    return imgs, attrs


def _light(embedder, imgs, prompts, groups) -> pa.Table:
    emb = embedder.image_embeddings([Image.fromarray(x) for x in imgs])
    txt = embedder.text_embeddings(prompts)
    return pa.table({
        "sample_id": [f"s{k:05d}" for k in range(len(imgs))], "prompt_id": [f"p{k}" for k in range(len(imgs))],
        "attributes": pa.array([sorted(g.items()) for g in groups], pa.map_(pa.string(), pa.string())),
        "pixel_sha256": [pixel_sha256(x) for x in imgs], "phash": [perceptual_hash(x) for x in imgs],
        "clip_score": pa.array(clip_score(emb, txt), pa.float32()),
        "image_emb": pa.array(list(emb), pa.list_(pa.float32())),
    })


def _spec(curation: dict) -> JobSpec:
    return JobSpec.model_validate({
        "name": "toy", "manifest": {"template": {"template": "a {s}", "slots": {"s": ["x"]}}},
        "generator": {"model": "unused"}, "clip": CLIP, "output": {"url": "unused"},
        "curation": CurationSpec.model_validate(curation).model_dump()})


def _one_object(a: world.Attributes) -> bool:
    return a.domain == "phantom" or len(a.shapes) == 1


def test_safety_concept_flags_the_concept_and_not_others(embedder):
    """Stand-in concept "a triangle": threshold calibrated on one sample of the world, precision
    and recall measured on another, with the judge's verdict as ground truth."""
    def truth(imgs):
        return np.array([any(v == "triangle" for k, v in judge.judge(x).items() if k.startswith("shape"))
                         for x in imgs])

    cal_imgs, _ = _images(1, 400, _one_object)
    cal_emb = embedder.image_embeddings([Image.fromarray(x) for x in cal_imgs])
    spec0 = _spec({"safety": {"mode": "report", "concepts": [{**TRIANGLE, "threshold": 0.0}]}})
    scale = min(float(embedder.model.logit_scale.detach().exp()), 100.0)
    cal_scores, _ = safety.concept_scores(cal_emb, spec0.curation.safety, embedder.text_embeddings, scale)
    threshold = safety.calibrate_threshold(cal_scores["triangle"], truth(cal_imgs))

    imgs, _ = _images(2, 600, _one_object)
    y = truth(imgs)
    light = _light(embedder, imgs, ["a shape"] * len(imgs), [{}] * len(imgs))
    spec = _spec({"safety": {"mode": "filter", "concepts": [{**TRIANGLE, "threshold": threshold}]}})
    dec = single.decide(light, spec, [])
    flagged = np.array(["unsafe:triangle" in r for r in dec.column("reasons").to_pylist()])
    tp = int((flagged & y).sum())
    precision, recall = tp / max(int(flagged.sum()), 1), tp / int(y.sum())
    print(f"safety 'triangle' (toy CLIP, {len(imgs)} held-out images, {int(y.sum())} triangles, "
          f"threshold {threshold:.3f}): precision {precision:.3f} recall {recall:.3f}")
    assert precision >= 0.9 and recall >= 0.9
    scores = np.array([dict(m)["triangle"] for m in dec.column("safety_scores").to_pylist()])
    assert ((scores >= threshold) == flagged).all()
    # report mode: the same samples are flagged but kept; images are never altered
    rep = single.decide(light, _spec({"safety": {"mode": "report", "concepts": [{**TRIANGLE, "threshold": threshold}]}}),
                        [])
    assert all(rep.column("kept").to_pylist())
    assert np.array(["unsafe:triangle" in f for f in rep.column("flags").to_pylist()]).tolist() == flagged.tolist()


def test_safety_classifier_head_from_a_file(embedder, tmp_path):
    """The optional classifier head: a logistic head trained here on embeddings, saved, reloaded."""
    imgs, attrs = _images(3, 300, _one_object)
    emb = embedder.image_embeddings([Image.fromarray(x) for x in imgs]).astype(np.float64)
    y = np.array([a.domain == "phantom" for a in attrs], float)
    w, b = np.zeros(emb.shape[1]), 0.0
    for _ in range(300):  # plain gradient descent on the logistic loss
        p = 1 / (1 + np.exp(-(emb @ w + b)))
        w -= 2.0 * emb.T @ (p - y) / len(y)
        b -= 2.0 * float((p - y).mean())
    path = tmp_path / "head.safetensors"
    safety.save_classifier(str(path), ["phantom"], w[None], np.array([b]))
    spec = _spec({"safety": {"mode": "filter", "classifier": {"path": str(path), "threshold": 0.5}}})
    dec = single.decide(_light(embedder, imgs, ["x"] * len(imgs), [{}] * len(imgs)), spec, [])
    flagged = np.array(["unsafe:clf:phantom" in r for r in dec.column("reasons").to_pylist()])
    assert (flagged == y.astype(bool)).mean() >= 0.95


def _colour_vocab() -> dict[str, list[str]]:
    return {c: [f"a {c} shape"] + [f"a {c} {s}" for s in world.SHAPES] for c in world.COLOURS}


def test_bias_audit_finds_the_planted_skew_and_rebalancing_removes_it(embedder):
    """Prompts "a circle" / "a square" with the colour left open: the world's prior makes circles
    mostly red. The audit's perceived-colour distribution per prompt group must agree with the
    judge's (overlapping 95% intervals for every colour), find the skew in circles and not in
    squares; rebalancing to uniform must leave a judge-measured distribution close to uniform."""
    imgs, attrs = _images(4, 720, lambda a: a.domain == "shapes" and len(a.shapes) == 1
                          and a.shapes[0].shape in ("circle", "square"))
    shapes = [a.shapes[0].shape for a in attrs]
    light = _light(embedder, imgs, [f"a {s}" for s in shapes], [{"shape": s} for s in shapes])
    spec = _spec({"bias": {"attributes": {"colour": _colour_vocab()}, "group_by": ["shape"], "bootstrap": 1000},
                  "rebalance": {"attribute": "colour", "target": "uniform", "prefer": "first"}})
    dec = single.decide(light, spec, [])
    summary = curate.summary_of(dec)
    json.dumps(summary)  # serialisable as curation.json
    colours = list(world.COLOURS)
    judged = np.array([colours.index(judge.judge(x)["colour"]) for x in imgs])
    audit = {a["group"]: a for a in summary["stages"][0]["audit"]}
    rng = np.random.default_rng(0)
    for shape in ("circle", "square"):
        sel = np.array(shapes) == shape
        a = audit[f"shape={shape}"]
        j = bias.summarise(judged[sel], len(colours), 1000, 0.95, rng)
        assert a["values"] == colours and a["n"] == j["n"] == int(sel.sum())
        for v, c in enumerate(colours):
            (alo, ahi), (jlo, jhi) = a["p_ci"][v], j["p_ci"][v]
            assert alo <= jhi and jlo <= ahi, (shape, c, a["p"][v], j["p"][v])
        print(f"{shape}: audit p(red) {a['p'][0]:.3f} {a['p_ci'][0]}, judge p(red) {j['p'][0]:.3f}, "
              f"audit KL {a['metrics']['kl_uniform']}, n={a['n']}")
    red = colours.index("red")
    assert audit["shape=circle"]["p_ci"][red][0] > 0.5  # the planted skew (0.7 + 0.3/6 = 0.75)
    assert audit["shape=square"]["p_ci"][red][0] < 1 / 6 < audit["shape=square"]["p_ci"][red][1]
    assert audit["shape=circle"]["metrics"]["max_dev"]["ci"][0] > audit["shape=square"]["metrics"]["max_dev"]["ci"][1]

    kept = np.array(dec.column("kept").to_pylist())
    final = {a["group"]: a for a in summary["stages"][-1]["audit"]}
    circ = final["shape=circle"]
    assert len(set(circ["counts"])) == 1 and circ["n"] >= 6  # perceived colours exactly uniform
    sel = kept & (np.array(shapes) == "circle")
    after = np.bincount(judged[sel], minlength=len(colours)) / sel.sum()
    assert np.abs(after - 1 / 6).max() <= 0.05, after  # and so, by the judge, close to uniform
    assert summary["rebalance"]["groups"][0]["group"] == "shape=circle"
