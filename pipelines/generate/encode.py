"""PNG encoding with the AI-generated label: IPTC DigitalSourceType in an XMP packet, plus
prompt/seed/model as PNG text chunks. Pillow writes the chunks; the XMP packet is a fixed template
(no library in our stack writes XMP, and the packet is tiny)."""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, PngImagePlugin

if TYPE_CHECKING:
    import pyarrow as pa

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
# IPTC's term for media that edits or combines given images with a trained model: img2img,
# inpainting, outpainting, style transfer (the publish step labels each image by its kind).
COMPOSITE_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
XMP_KEY = "XML:com.adobe.xmp"

_XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    Iptc4xmpExt:DigitalSourceType="{dst}">
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{desc}</rdf:li></rdf:Alt></dc:description>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="r"?>"""


def pixel_sha256(image: np.ndarray) -> str:
    """Hash of decoded pixels (shape included), independent of PNG encoding."""
    h = hashlib.sha256(f"{image.shape}|{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def source_type_for(backend: str | None, *input_images: str | None) -> str:
    """IPTC DigitalSourceType of a sample: composite when it was made from given images (any input
    image, or the style backend), else trainedAlgorithmicMedia (text to image, GAN)."""
    return COMPOSITE_SOURCE_TYPE if backend == "style" or any(input_images) else DIGITAL_SOURCE_TYPE


def encode_png(image: np.ndarray, text: dict[str, str], source_type: str = DIGITAL_SOURCE_TYPE) -> bytes:
    """Deterministic PNG (fixed compression level, chunks in a fixed order)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(XMP_KEY, _XMP.format(dst=source_type, desc=escape(text.get("prompt", ""))))
    for k in sorted(text):
        info.add_itxt(k, text[k])
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info, compress_level=6)
    return buf.getvalue()


def digital_source_type(png: bytes) -> str | None:
    """Parse the XMP packet of a PNG and return its IPTC DigitalSourceType."""
    import xml.etree.ElementTree as ET

    xmp = Image.open(io.BytesIO(png)).info.get(XMP_KEY)
    if not xmp:
        return None
    root = ET.fromstring(xmp[xmp.index("<x:xmpmeta") : xmp.index("</x:xmpmeta>") + len("</x:xmpmeta>")])
    ns = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"
    for el in root.iter():
        if ns in el.attrib:
            return el.attrib[ns]
    return None


def encode_unit(table: "pa.Table") -> "pa.Table":
    """The CPU stage after the generator: raw pixels -> labelled PNG, pixel sha256 and pHash.

    Takes a ``PIXEL_SCHEMA`` table (plus any columns added since, e.g. embeddings) and returns the
    ``GEN_SCHEMA`` columns followed by those extra columns, with the schema metadata kept."""
    import pyarrow as pa

    from pipelines.contracts.unit import GEN_SCHEMA, PIXEL_SCHEMA, meta, pixels_from_bytes
    from pipelines.curation.dedup.hashes import perceptual_hash

    model = str(meta(table, "synthgen.generator")["model"])
    pixels, shapes = table.column("pixels").to_pylist(), table.column("pixels_shape").to_pylist()
    prompts, seeds = table.column("prompt").to_pylist(), table.column("seed").to_pylist()
    ids = table.column("sample_id").to_pylist()
    png: list[bytes | None] = []
    sha: list[str | None] = []
    ph: list[str | None] = []
    for buf, shape, prompt, seed, sid in zip(pixels, shapes, prompts, seeds, ids):
        if buf is None:  # a failed sample has no image
            png.append(None), sha.append(None), ph.append(None)
            continue
        img = pixels_from_bytes(buf, shape)
        png.append(encode_png(img, {"prompt": prompt, "seed": str(seed), "model": model, "sample_id": sid}))
        sha.append(pixel_sha256(img))
        ph.append(perceptual_hash(img))
    made = {"png": pa.chunked_array([pa.array(png, pa.binary())]),
            "pixel_sha256": pa.chunked_array([pa.array(sha, pa.string())]),
            "phash": pa.chunked_array([pa.array(ph, pa.string())])}
    extra = [f for f in table.schema if f.name not in PIXEL_SCHEMA.names]
    fields = list(GEN_SCHEMA) + extra
    cols = [made[f.name] if f.name in made else table.column(f.name) for f in fields]
    return pa.Table.from_arrays(cols, schema=pa.schema(fields, metadata=table.schema.metadata))
