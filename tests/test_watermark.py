"""Invisible watermark: invisible enough, decodes to the dataset and sample, survives what it claims to
(JPEG quality 90, a 10% crop, at 256 px on toy-world renders), and fails where the README says it does."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import JobSpec
from pipelines.generate.encode import encode_png
from pipelines.publish import watermark as wm
from pipelines.publish.label import Labeller
from pipelines.toyworld import world

from .conftest import job_dict


def _renders(size: int, n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    out = [world.render(world.sample_attributes(rng, domain="shapes"), seed=i, size=size) for i in range(n - 1)]
    return out + [world.render(world.sample_attributes(rng, domain="phantom"), seed=n, size=size)]


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _crop10(img: np.ndarray) -> np.ndarray:
    """Keep 90% of each side, off the block grid (a 10% crop)."""
    h, w = img.shape[:2]
    top, left = (h - int(h * 0.9)) // 2 + 3, (w - int(w * 0.9)) // 2 + 5
    return img[top:top + int(h * 0.9), left:left + int(w * 0.9)]


def test_mark_is_invisible_and_names_dataset_and_sample():
    for i, img in enumerate(_renders(256)):
        mark = wm.mark_for("fingerprint-a", f"sample_{i:05d}")
        out = wm.embed(img, mark)
        diff = out.astype(np.float64) - img
        assert np.abs(diff).max() <= 2 and 10 * np.log10(255 ** 2 / np.mean(diff ** 2)) > 45
        assert wm.decode(out) == mark
        assert mark.dataset_tag == wm.tag("fingerprint-a") and mark.sample_tag == wm.tag(f"sample_{i:05d}")
        assert wm.decode(img) is None  # unmarked: the CRC rejects every candidate word


@pytest.mark.parametrize("attack", ["jpeg90", "crop10", "crop10+jpeg90"])
def test_mark_survives_jpeg_90_and_a_10_percent_crop_at_256px(attack):
    for i, img in enumerate(_renders(256)):
        mark = wm.mark_for("fp", f"s{i}")
        out = wm.embed(img, mark)
        got = {"jpeg90": lambda a: _jpeg(a, 90), "crop10": _crop10,
               "crop10+jpeg90": lambda a: _jpeg(_crop10(a), 90)}[attack](out)
        assert wm.decode(got) == mark, (attack, i)


def test_limits_resizing_removes_it_and_32px_cannot_hold_it():
    img = _renders(256, 1)[0]
    out = wm.embed(img, wm.mark_for("fp", "s"))
    half = np.asarray(Image.fromarray(out).resize((128, 128), Image.Resampling.BILINEAR))
    assert wm.decode(half) is None  # stated in the README: resizing is not survived
    with pytest.raises(ValueError, match="minimum"):
        wm.embed(_renders(32, 1)[0], wm.mark_for("fp", "s"))


def test_labeller_marks_large_images_skips_small_ones_and_verify_image_reads_a_jpeg_copy(tmp_path):
    img = _renders(256, 1)[0]
    rec = {"sample_id": "p_00000", "prompt": "x", "seed": 1,
           "generator": {"backend": "diffusion", "model": "m", "weights_sha256": None},
           "image": {"format": "png", "width": 256, "height": 256, "pixel_sha256": "0" * 64}, "ai_generated": {}}
    lab = Labeller("ds", "fp-xyz", None, 24.0)
    png, out = lab(encode_png(img, {"prompt": "x"}), rec, {})
    mark = wm.mark_for("fp-xyz", "p_00000")
    assert out["ai_generated"]["watermark"] == {"method": wm.METHOD, "payload": mark.payload}
    px = np.asarray(Image.open(io.BytesIO(png)))
    from pipelines.generate.encode import pixel_sha256

    assert out["image"]["pixel_sha256"] == pixel_sha256(px) != pixel_sha256(img)
    (tmp_path / "copy.jpg").write_bytes(_jpeg_bytes(px))
    r = CliRunner().invoke(app, ["verify-image", str(tmp_path / "copy.jpg")])
    assert r.exit_code == 0, r.output
    assert f"dataset tag {mark.dataset_tag}, sample tag {mark.sample_tag}" in r.output and "no manifest" in r.output
    small, rec_small = lab(encode_png(_renders(32, 1)[0], {}), {**rec, "image": {**rec["image"], "width": 32}}, {})
    assert rec_small["ai_generated"]["watermark"]["payload"] is None
    assert "128" in rec_small["ai_generated"]["watermark"]["skipped"]
    (tmp_path / "plain.png").write_bytes(encode_png(img, {}))
    r = CliRunner().invoke(app, ["verify-image", str(tmp_path / "plain.png")])
    assert r.exit_code == 1 and "no C2PA manifest and no watermark" in r.output


def _jpeg_bytes(px: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_defaults_on_for_natural_off_for_medical_and_too_small_is_a_spec_error():
    base = job_dict(Path("/m"), "/tmp/o", generator={"model": "/m", "height": 256, "width": 256})
    assert Labeller.for_job(JobSpec.model_validate(base), "f").watermark_strength == 24.0
    med = JobSpec.model_validate({**base, "provenance": {"domain": "medical", "c2pa": {"enabled": False}}})
    assert Labeller.for_job(med, "f").watermark_strength is None
    on = {**base, "provenance": {"domain": "medical", "watermark": {"enabled": True}}}
    assert Labeller.for_job(JobSpec.model_validate(on), "f").watermark_strength == 24.0
    with pytest.raises(ValidationError, match="at least 128x128"):
        JobSpec.model_validate(job_dict(Path("/m"), "/tmp/o", provenance={"watermark": {"enabled": True}}))
