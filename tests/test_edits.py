"""Outpainting canvases and named-region masks (pure inputs of the inpainting path)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.generate.edits import load_region_fn, outpaint_canvas, parse_padding, region_mask
from pipelines.toyworld import world


def test_outpaint_canvas_keeps_the_image_and_masks_only_the_padding():
    img = world.render(world.Attributes(domain="phantom"), 1, 32)
    canvas, mask = outpaint_canvas(img, parse_padding("8,0,8,4"))
    assert canvas.shape == (36, 48, 3) and mask.shape == (36, 48)
    assert np.array_equal(canvas[0:32, 8:40], img)
    assert (mask[0:32, 8:40] == 0).all() and (mask[:, :8] == 255).all() and (mask[32:] == 255).all()
    assert parse_padding(4) == (4, 4, 4, 4) and parse_padding("6") == (6, 6, 6, 6)
    for bad in ("1,2", "-3", "a"):
        with pytest.raises(ValueError, match="padding"):
            parse_padding(bad)


def test_toy_lung_regions_cover_where_the_world_draws_nodules():
    fn = load_region_fn("pipelines.toyworld.regions:region_mask")
    left = region_mask(fn, "left_lung", 64, 64) > 0
    right = region_mask(fn, "right_lung", 64, 64) > 0
    assert not (left & right).any() and np.argwhere(left)[:, 1].min() > 32  # patient left = image right
    judge_side = {}
    for seed in range(10):
        img = world.render(world.Attributes(domain="phantom", nodule_side="left", nodule_size="large"), seed, 64)
        bright = img[..., 0] > 190
        bright[:, 30:34] = False  # the spine
        judge_side[seed] = bright[left].sum() > 0 and bright[right].sum() == 0
    assert all(judge_side.values())
    with pytest.raises(ValueError, match="unknown toy-world region"):
        region_mask(fn, "heart", 32, 32)


def test_padding_has_one_canonical_text_and_clear_errors():
    from pipelines.contracts.edits import padding_text

    assert padding_text(8) == padding_text("8") == padding_text(" 8,8,8,8 ") == "8"
    assert padding_text("0,4,0,4") == "0,4,0,4"
    for bad, msg in ((0, "pads nothing"), ("0,0,0,0", "pads nothing"), (-2, ">= 0"), (4096, "at most"),
                     ("8px", "left,top,right,bottom"), (True, "left,top,right,bottom")):
        with pytest.raises(ValueError, match=msg):
            padding_text(bad)


def _sample(tmp_path, image: np.ndarray, sid: str = "s", h: int = 32, w: int = 32, **edit):
    from PIL import Image

    from pipelines.plan.samples import Sample

    path = tmp_path / f"{sid}.png"
    Image.fromarray(image).save(path)
    return Sample(sid, "p", 0, "chest radiograph", None, 1, 2, 1.0, h, w, {}, init_image=str(path), **edit)


def test_fetch_stage_makes_region_masks_and_outpaint_canvases(tmp_path):
    from pipelines.generate.inputs import fetch_inputs, read_inputs

    img = world.render(world.Attributes(domain="phantom"), 3, 32)
    samples = [_sample(tmp_path, img, "region", mask_region="left_lung"),
               _sample(tmp_path, img, "pad", h=48, w=40, outpaint="4,8,4,8"),
               _sample(tmp_path, img, "small", h=32, w=32, outpaint="13"),
               _sample(tmp_path, img, "heart", mask_region="heart")]
    assert all(s.inpaints for s in samples) and samples[0].compat_key() != samples[0].__class__(
        **{**samples[0].to_dict(), "mask_region": None}).compat_key()
    table = fetch_inputs(samples)
    got = read_inputs(table, samples)
    region = got["region"]
    assert np.array_equal(region.init, img)
    left = region_mask(load_region_fn("pipelines.toyworld.regions:region_mask"), "left_lung", 32, 32)
    assert np.array_equal(region.mask[..., 0], left) and (region.mask[..., 0] == region.mask[..., 2]).all()
    pad = got["pad"]  # height/width are the output size: the 32x32 image fits inside 4+4 / 8+8 px
    assert pad.init.shape == pad.mask.shape == (48, 40, 3)
    assert np.array_equal(pad.init[8:40, 4:36], img) and (pad.mask[8:40, 4:36] == 0).all()
    assert (pad.mask[:8] == 255).all() and (pad.mask[:, :4] == 255).all()
    assert got["small"] == ("outpaint '13': leaves 6x6 px for the init image in the 32x32 output (height and "
                            "width are the output size; at least 8 px inside)")
    assert got["heart"].startswith("mask_region 'heart': no installed region plug-in knows 'heart'")


def test_inpainting_keeps_the_input_outside_the_mask():
    from pipelines.generate.backends.diffusion import keep_unmasked

    init = np.full((4, 4, 3), 10, np.uint8)
    made = np.full((4, 4, 3), 200, np.uint8)
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[0, 0], mask[1, 1], mask[2, 2] = 255, 128, 127  # diffusers binarises at 0.5
    out = keep_unmasked(made, init, mask)
    assert out[0, 0, 0] == out[1, 1, 0] == 200 and out[2, 2, 0] == 10 and (out[3] == 10).all()


def test_regions_are_picked_by_name_among_installed_plugins(monkeypatch):
    from pipelines import plugins

    assert plugins.find_region("left_lung")[0::2] == ("toyworld", "left_lung")
    assert plugins.find_region("toyworld/lungs")[0::2] == ("toyworld", "lungs")
    with pytest.raises(ValueError, match="no region plug-in 'atlas'"):
        plugins.find_region("atlas/left_lung")

    class Ep:  # a second installed plug-in that also knows every toy region
        name = "atlas"

        @staticmethod
        def load():
            return lambda name, h, w: np.ones((h, w), bool)

    installed = plugins.region_plugins()
    monkeypatch.setattr(plugins, "region_plugins", lambda: {**installed, "atlas": Ep()})
    plugins.find_region.cache_clear()
    try:
        with pytest.raises(ValueError, match="several region plug-ins: write 'toyworld/left_lung' or 'atlas/left_lung'"):
            plugins.find_region("left_lung")
        assert plugins.find_region("toyworld/left_lung")[0] == "toyworld"
    finally:
        plugins.find_region.cache_clear()


def test_edits_need_an_inpainting_backend_and_a_known_region():
    import pyarrow as pa

    from pipelines.errors import ManifestError
    from pipelines.plan import manifest as mf

    rows = mf.validate_table(pa.table({"prompt_id": ["a", "b"], "prompt": ["x", "y"], "seed": [1, 2],
                                       "init_image": ["/i.png", "/i.png"], "mask_region": ["left_lung", "heart"],
                                       "outpaint": [None, None]}), "m.parquet")
    table = mf.to_canonical(rows)
    with pytest.raises(ManifestError) as e:
        mf.check_backend_fields(table, "m.parquet", "diffusion")
    assert str(e.value).startswith("m.parquet: row 1 (prompt_id 'b'): field 'mask_region': no installed region "
                                   "plug-in knows 'heart'") and "row 0" not in str(e.value)
    with pytest.raises(ManifestError, match="row 0 .*field 'mask_region': needs an inpainting backend"):
        mf.check_backend_fields(table, "m.parquet", "gan")
