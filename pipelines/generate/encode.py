"""PNG encoding with the AI-generated label: IPTC DigitalSourceType in an XMP packet, plus
prompt/seed/model as PNG text chunks. Pillow writes the chunks; the XMP packet is a fixed template
(no library in our stack writes XMP, and the packet is tiny)."""

from __future__ import annotations

import hashlib
import io
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, PngImagePlugin

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
