"""The procedural world: determinism, caption grammar, judge accuracy, export round trip."""

from __future__ import annotations

import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.toyworld.captions import caption, compose, parse_caption
from pipelines.toyworld.data import (
    DIFFUSION_SKEW,
    eval_prompts,
    held_out_pairs,
    is_held_out,
    training_examples,
)
from pipelines.toyworld.export import export
from pipelines.toyworld.judge import agreement, judge
from pipelines.toyworld.world import (
    COLOURS,
    PLANTED_SKEW,
    Attributes,
    ShapeSpec,
    render,
    sample_attributes,
)


def test_render_is_deterministic_and_seed_sensitive() -> None:
    rng = np.random.default_rng(0)
    attrs = [sample_attributes(rng) for _ in range(20)]
    a = [render(x, i) for i, x in enumerate(attrs)]
    b = [render(x, i) for i, x in enumerate(attrs)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(render(attrs[0], 0), render(attrs[0], 1))
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in a)
    assert render(attrs[0], 0, size=64).shape == (64, 64, 3)


def test_phantoms_are_grey_rgb() -> None:
    img = render(Attributes("phantom", nodule_side="left", nodule_size="large"), 3)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_sampling_is_deterministic_and_skewed() -> None:
    first = [sample_attributes(np.random.default_rng(5)) for _ in range(2)]
    assert first[0] == first[1]
    rng = np.random.default_rng(1)
    colours = collections.Counter(
        s.colour for _ in range(4000) for s in sample_attributes(rng, "shapes").shapes
        if s.shape == PLANTED_SKEW["shape"])
    share = colours[PLANTED_SKEW["value"]] / sum(colours.values())
    expected = PLANTED_SKEW["probability"] + (1 - PLANTED_SKEW["probability"]) / len(COLOURS)
    assert abs(share - expected) < 0.04


def test_diffusion_training_data_carry_the_milder_planted_prior() -> None:
    p = float(DIFFUSION_SKEW["probability"])
    examples = training_examples(1000, 0, p)
    assert not any(is_held_out(e.attrs) for e in examples)
    rng = np.random.default_rng(1)
    colours = collections.Counter(
        s.colour for _ in range(4000) for s in sample_attributes(rng, "shapes", skew_probability=p).shapes
        if s.shape == DIFFUSION_SKEW["shape"])
    share = colours[DIFFUSION_SKEW["value"]] / sum(colours.values())
    assert abs(share - (p + (1 - p) / len(COLOURS))) < 0.04
    assert p < PLANTED_SKEW["probability"]
    # the world's own default (CLIP and GAN data) is unchanged
    assert training_examples(50, 0) == training_examples(50, 0, None)


def test_eval_prompts_cover_every_held_out_pair_evenly() -> None:
    counts = collections.Counter((p.spec["shape"], p.spec["colour"])
                                 for p in eval_prompts() if p.group == "shapes")
    assert set(counts) == set(held_out_pairs()) and ("square", "red") in counts
    assert max(counts.values()) - min(counts.values()) <= 1


def test_caption_grammar_round_trips() -> None:
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(3000):
        text, spec = caption(sample_attributes(rng), rng)
        assert parse_caption(text) == spec, text
        assert text == text.strip() and "  " not in text
        seen.add(text)
    assert len(seen) > 1000  # many phrasings, not one template


def test_captions_have_several_phrasings_and_unspecified_forms() -> None:
    rng = np.random.default_rng(3)
    spec = {"domain": "shapes", "count": "1", "shape": "circle", "colour": "red", "position": "left"}
    assert len({compose(spec, rng) for _ in range(50)}) >= 4
    assert parse_caption("a circle on the left") == {"domain": "shapes", "count": "1",
                                                     "shape": "circle", "position": "left"}
    assert parse_caption("normal chest radiograph") == {"domain": "phantom", "nodule": "absent"}
    assert parse_caption("frontal chest radiograph with a large nodule in the right lung") == {
        "domain": "phantom", "nodule": "present", "nodule_side": "right", "nodule_size": "large"}
    assert parse_caption("a photo of a nurse") == {}


def test_judge_is_accurate_on_2000_clean_images() -> None:
    rng = np.random.default_rng(123)
    total, correct = collections.Counter(), collections.Counter()
    for i in range(2000):
        attrs = sample_attributes(rng, skewed=False)
        verdict = judge(render(attrs, 50_000 + i))
        for key, value in attrs.flat().items():
            total[key] += 1
            correct[key] += verdict.get(key) == value
    accuracy = {k: correct[k] / total[k] for k in total}
    assert total["nodule_side"] > 300 and total["shape_2"] > 200
    assert min(accuracy.values()) >= 0.98, accuracy


def test_judge_accepts_pil_and_other_sizes_and_says_unknown() -> None:
    attrs = Attributes("shapes", (ShapeSpec("triangle", "blue", "large", "right"),), "white")
    verdict = judge(Image.fromarray(render(attrs, 1, size=64)))
    assert {k: verdict[k] for k in attrs.flat()} == attrs.flat()
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert judge(noise)["domain"] == "unknown"
    assert judge(np.zeros((32, 32, 3), np.uint8))["domain"] == "unknown"


def test_agreement_matches_objects_in_either_order() -> None:
    attrs = Attributes("shapes", (ShapeSpec("circle", "red", "small", "left"),
                                  ShapeSpec("square", "blue", "large", "right")), "black")
    verdict = judge(render(attrs, 4))
    prompt = {"domain": "shapes", "count": "2", "shape": "square", "colour": "blue",
              "shape_2": "circle", "colour_2": "red"}  # positions unstated, order swapped
    assert all(agreement(prompt, verdict).values())
    wrong = prompt | {"colour": "green"}
    assert agreement(wrong, verdict)["colour"] is False


def test_held_out_combinations_never_reach_training() -> None:
    examples = training_examples(3000, 0)
    assert not any(is_held_out(e.attrs) for e in examples)
    prompts = eval_prompts(50, 10)
    held = [p for p in prompts if p.group == "shapes"]
    for p in held:
        spec = ShapeSpec(p.spec["shape"], p.spec["colour"], "small", p.spec["position"])
        assert parse_caption(p.prompt) == p.spec
        assert any(is_held_out(Attributes("shapes", (ShapeSpec(spec.shape, spec.colour, size,
                                                               spec.position),), bg))
                   for size in ("small", "large") for bg in ("white", "gray", "black"))


@pytest.mark.parametrize("kind", ["train", "reference"])
def test_export_writes_pngs_and_parquet(tmp_path, kind: str) -> None:
    path = export(tmp_path, kind, n=12, seed=1)
    table = pq.read_table(path).to_pylist()
    assert len(table) == 12
    for row in table:
        img = np.asarray(Image.open(tmp_path / row["file"]))
        attrs = dict(row["attributes"])
        assert img.shape == (32, 32, 3)
        assert {k: judge(img).get(k) for k in attrs} == attrs
        assert parse_caption(row["caption"]) == json.loads(row["caption_spec"])
