"""The CPU fetch stage: a unit's input images (init/mask/style URIs) read and decoded before the
generator, so the GPU actor never waits on storage or image decoding.

An unreadable input fails only its own sample (``input_error``); the generator skips that sample.
Each (URL, size) is read once per unit: a row's samples share their inputs. Edits become masks here
too: ``mask_region`` a named region's mask, ``outpaint`` the init image fitted inside the sample's
size and the padding around it as the mask, so the generator only ever inpaints an (image, mask) pair.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from pipelines.contracts.edits import MIN_INNER, inner_size, parse_padding
from pipelines.contracts.unit import INPUT_SCHEMA, pixels_from_bytes, pixels_to_bytes
from pipelines.generate.backends import SampleInputError, SampleInputs
from pipelines.generate.edits import named_region_mask, outpaint_canvas
from pipelines.plan.samples import Sample

KINDS = ("init", "mask", "style")


def load_image(url: str, width: int, height: int) -> np.ndarray:
    """An input image from any fsspec URL, as RGB uint8 at the sample's size."""
    import fsspec
    from PIL import Image

    with fsspec.open(url, "rb") as f:
        im = Image.open(io.BytesIO(f.read()))
        im.load()
    return np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC))


def _error(e: Exception) -> str:
    # no object reprs (memory addresses) in the message: reruns record the same text
    msg = str(e).split(" <_io.", 1)[0]
    return f"{type(e).__name__}: {msg}"[:500]


Cache = dict[tuple[str, int, int], "np.ndarray | Exception"]


def _image(cache: Cache, kind: str, url: str, width: int, height: int) -> np.ndarray:
    """One decoded input, read once per (URL, size) and unit: a row's samples share their inputs."""
    key = (url, width, height)
    if key not in cache:
        try:
            cache[key] = load_image(url, width, height)
        except Exception as e:  # any unreadable input is this sample's fault, whatever raised
            cache[key] = e
    got = cache[key]
    if isinstance(got, Exception):
        raise SampleInputError(f"{kind}_image {url}: {_error(got)}")
    return got


def _rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask[:, :, None], 3, axis=2)


def sample_inputs(s: Sample, cache: Cache | None = None) -> SampleInputs:
    """A sample's inputs as the generator takes them, at the sample's size; a named region or an
    outpainting becomes an ordinary (image, mask) pair here, on the CPU. SampleInputError (naming the
    field) when an input is unusable."""
    cache = {} if cache is None else cache
    init = mask = style = None
    if s.outpaint and s.init_image:
        try:
            pad = parse_padding(s.outpaint)
        except ValueError as e:
            raise SampleInputError(f"outpaint: {e}") from None
        ih, iw = inner_size(s.height, s.width, pad)
        if min(ih, iw) < MIN_INNER:
            raise SampleInputError(f"outpaint {s.outpaint!r}: leaves {max(ih, 0)}x{max(iw, 0)} px for the "
                                   f"init image in the {s.height}x{s.width} output (height and width are the "
                                   f"output size; at least {MIN_INNER} px inside)")
        canvas, pad_mask = outpaint_canvas(_image(cache, "init", s.init_image, iw, ih), pad)
        init, mask = canvas, _rgb(pad_mask)
    elif s.init_image:
        init = _image(cache, "init", s.init_image, s.width, s.height)
    if s.mask_image:
        mask = _image(cache, "mask", s.mask_image, s.width, s.height)
    elif s.mask_region:
        key = (f"region:{s.mask_region}", s.width, s.height)
        if key not in cache:
            try:
                cache[key] = _rgb(named_region_mask(s.mask_region, s.height, s.width))
            except ValueError as e:
                cache[key] = SampleInputError(f"mask_region '{s.mask_region}': {e}")
        got = cache[key]
        if isinstance(got, Exception):
            raise got
        mask = got
    if s.style_image:
        style = _image(cache, "style", s.style_image, s.width, s.height)
    return SampleInputs(init=init, mask=mask, style=style)


def fetch_inputs(samples: list[Sample]) -> pa.Table | None:
    """Decoded inputs of the unit's samples, or None when no sample has any (nothing to carry)."""
    if not any(getattr(s, f"{k}_image") for s in samples for k in KINDS):
        return None
    cache: Cache = {}
    rows = []
    for s in samples:
        row: dict[str, object] = {"sample_id": s.sample_id, "input_error": None}
        try:
            got = sample_inputs(s, cache)
        except SampleInputError as e:
            row |= {f"{k}_pixels": None for k in KINDS} | {"input_error": str(e)[:500]}
        else:
            row |= {f"{k}_pixels": None if getattr(got, k) is None else pixels_to_bytes(getattr(got, k))
                    for k in KINDS}
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)


def read_inputs(table: pa.Table | None, samples: list[Sample]) -> dict[str, SampleInputs | str]:
    """sample_id -> its decoded inputs, or its input error; {} when the unit has no inputs."""
    if table is None:
        return {}
    size = {s.sample_id: (s.height, s.width, 3) for s in samples}
    out: dict[str, SampleInputs | str] = {}
    for r in table.to_pylist():
        if r["input_error"]:
            out[r["sample_id"]] = r["input_error"]
            continue
        shape = size[r["sample_id"]]
        arrays = {k: None if r[f"{k}_pixels"] is None else pixels_from_bytes(r[f"{k}_pixels"], shape) for k in KINDS}
        out[r["sample_id"]] = SampleInputs(**arrays)
    return out
