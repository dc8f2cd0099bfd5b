"""The manifest's edit columns: the ``outpaint`` padding grammar and the rules a row's edit must
keep (``mask_region`` names are a schema pattern; the regions themselves come from plug-ins).

Here rather than in ``generate/edits.py`` because the manifest reader (``plan/``) validates them and
the fetch stage (``generate/``) applies them: one grammar, no import between the two stages.
"""

from __future__ import annotations

import re
from typing import Any

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


def row_errors(row: dict[str, Any]) -> list[tuple[str, str]]:
    """A row's edit fields must make one coherent edit of a given image."""
    out: list[tuple[str, str]] = []
    for f in ("mask_region", "outpaint"):
        if row.get(f) is not None and not row.get("init_image"):
            out.append((f, "needs an init_image (the image to edit)"))
    if row.get("mask_region") and row.get("mask_image"):
        out.append(("mask_region", "is set with mask_image: give one mask"))
    if row.get("outpaint") and (row.get("mask_image") or row.get("mask_region")):
        out.append(("outpaint", "cannot be combined with mask_image or mask_region (outpainting masks its padding)"))
    pad = row.get("outpaint")
    if isinstance(pad, str):
        left, top, right, bottom = parse_padding(pad)
        for f, used in (("height", top + bottom), ("width", left + right)):
            size = row.get(f)
            if size is not None and size - used < MIN_INNER:
                out.append(("outpaint", f"{pad!r} leaves {size - used} px of {f} {size} for the init image "
                                        f"(height and width are the output size, padding included; at least "
                                        f"{MIN_INNER} px inside)"))
    return out


#: Built-in backends without an inpainting pipeline: edits under them are errors, not ignored.
NO_INPAINTING = ("gan", "style", "procedural")


def backend_errors(row: dict[str, Any], backend: str) -> list[tuple[str, str]]:
    """What the job's backend and the installed region plug-ins make of a row's edits."""
    from pipelines.plugins import find_region

    out = [(f, f"needs an inpainting backend (diffusion), not generator.backend '{backend}'")
           for f in ("mask_region", "outpaint") if row.get(f) and backend in NO_INPAINTING]
    if row.get("mask_region") and backend not in NO_INPAINTING:
        try:
            find_region(row["mask_region"])
        except ValueError as e:
            out.append(("mask_region", str(e)))
    return out
