"""The manifest's ``outpaint`` padding as a value (``mask_region`` names are a schema pattern).

Here rather than in ``generate/edits.py`` because the manifest reader (``plan/``) validates them and
the fetch stage (``generate/``) applies them: one grammar, no import between the two stages.
"""

from __future__ import annotations

import re

MAX_PADDING = 2048  # pixels per side: past it the canvas is mostly invented
MIN_INNER = 8  # pixels: the smallest init image an outpainting keeps inside its output
_PAD = re.compile(r"^\s*(\d+)(?:\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+))?\s*$")


def parse_padding(spec: int | str) -> tuple[int, int, int, int]:
    """``N`` (every side) or ``"left,top,right,bottom"`` pixels -> a 4-tuple; ValueError otherwise."""
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise ValueError(f"outpaint padding must be N or 'left,top,right,bottom' pixels, got {spec!r}")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"outpaint padding must be >= 0, got {spec}")
        pad = (spec,) * 4
    else:
        m = _PAD.match(spec)
        if not m:
            raise ValueError(f"outpaint padding must be N or 'left,top,right,bottom' pixels, got {spec!r}")
        pad = (int(m.group(1)),) * 4 if m.group(2) is None else tuple(int(g) for g in m.groups())
    if max(pad) > MAX_PADDING:
        raise ValueError(f"outpaint padding must be at most {MAX_PADDING} pixels a side, got {spec!r}")
    return pad  # type: ignore[return-value]


def padding_text(spec: int | str) -> str:
    """The canonical manifest form: ``"N"`` when every side is equal, else ``"l,t,r,b"`` (so 8, "8" and
    "8,8,8,8" are the same content and hash alike); ValueError when it pads nothing."""
    pad = parse_padding(spec)
    if not any(pad):
        raise ValueError(f"outpaint padding {spec!r} pads nothing (leave the field null)")
    return str(pad[0]) if len(set(pad)) == 1 else ",".join(map(str, pad))


def inner_size(height: int, width: int, padding: tuple[int, int, int, int]) -> tuple[int, int]:
    """(height, width) the init image is fitted to inside an output of ``height`` x ``width``: a
    sample's height/width are its output size, outpainted or not."""
    left, top, right, bottom = padding
    return height - top - bottom, width - left - right
