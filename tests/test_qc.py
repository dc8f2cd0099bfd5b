"""Finding QC: the toy judge plugged in as a pixel classifier, zero-shot on embeddings, and the decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.curation.qc import (classify_pixels, classify_zero_shot, load_pixel_classifier, qc_reasons,
                                   qc_summary)
from pipelines.toyworld import world

KEYS = ("nodule", "nodule_side", "nodule_size")


def _phantom(seed: int, side: str, size: str = "large") -> np.ndarray:
    nodule = {"nodule_side": side, "nodule_size": size} if side != "none" else {}
    return world.render(world.Attributes(domain="phantom", **nodule), seed, 32)


def test_judge_qc_flags_wrong_side_and_missing_nodule():
    judge = load_pixel_classifier("pipelines.toyworld.judge:judge")
    images = [_phantom(1, "left"), _phantom(2, "right"), _phantom(3, "none"), _phantom(4, "left")]
    stated = [{"nodule": "present", "nodule_side": "left"},           # right as drawn
              {"nodule": "present", "nodule_side": "left"},           # drawn on the other side
              {"nodule": "present", "nodule_side": "right"},          # drawn without a nodule
              {"occupation": "n/a"}]                                  # states no finding: not checked
    cells = classify_pixels(judge, images, KEYS)
    reasons = qc_reasons(stated, cells, KEYS)
    assert reasons == [[], ["qc:nodule_side"], ["qc:nodule", "qc:nodule_side"], []]
    summary = qc_summary(stated, cells, KEYS)
    assert summary["agreement"]["nodule"] == {"n": 3, "agree": 2, "rate": pytest.approx(2 / 3)}
    assert summary["confusion"]["nodule_side"]["left"] == {"left": 1, "right": 1}
    assert summary["confusion"]["nodule_side"]["right"] == {"none": 1}


def test_zero_shot_picks_the_nearest_value_and_rejects_nan():
    text = {"nodule_side": {"left": np.array([1.0, 0.0]), "right": np.array([0.0, 1.0])}}
    emb = np.array([[0.9, 0.1], [0.2, 0.98]])
    cells = classify_zero_shot(emb / np.linalg.norm(emb, axis=1, keepdims=True), text, ["nodule_side"])
    preds = [json.loads(c)["nodule_side"] for c in cells]
    assert [p["pred"] for p in preds] == ["left", "right"] and all(p["score"] > 0.99 for p in preds)
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        classify_zero_shot(np.array([[1.0, 0.0], [np.nan, 0.0]]), text, ["nodule_side"])


def test_classifier_reference_errors_are_clear():
    with pytest.raises(ValueError, match="package.module:name"):
        load_pixel_classifier("judge")
    with pytest.raises(ValueError, match="not a callable"):
        load_pixel_classifier("pipelines.toyworld.world:SHAPES")
