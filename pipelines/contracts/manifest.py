"""The canonical manifest table: the Arrow columns every validated manifest is converted to.

``pipelines/plan/manifest.py`` reads and validates manifests into this schema (the JSON Schema in
``schemas/manifest.v1.schema.json`` is the row contract); a staged unit's sample columns
(``contracts/unit.py``) are these, less ``num_images``, plus the sample's id and index.
"""

from __future__ import annotations

import pyarrow as pa

MANIFEST_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("seed", pa.int64()),
        ("num_images", pa.int64()),
        ("steps", pa.int64()),
        ("guidance_scale", pa.float64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("attributes", pa.map_(pa.string(), pa.string())),
        # input image URIs (img2img, inpainting, outpainting, style): publish labels such images as
        # composites and names the inputs as C2PA ingredients
        ("init_image", pa.string()),
        ("mask_image", pa.string()),
        ("style_image", pa.string()),
        # the edit that makes the inpainting mask (generate/edits.py): a named region, or outpainting
        # padding ("N" or "l,t,r,b"); publish names it in the C2PA manifest beside the ingredients
        ("mask_region", pa.string()),
        ("outpaint", pa.string()),
    ]
)

#: What a sample carries of its row: every column but ``num_images``, after its id and index.
SAMPLE_FIELDS = [pa.field("sample_id", pa.string()), MANIFEST_SCHEMA.field("prompt_id"), pa.field("index", pa.int64())] + [
    f for f in MANIFEST_SCHEMA if f.name not in ("prompt_id", "num_images")]
