"""``synthgen verify-image FILE``: what marks one image carries, and whether they hold.

Reads the C2PA manifest (signature, hash binding, the synthgen assertion), decodes the invisible
watermark from the pixels, and reads the IPTC DigitalSourceType of a PNG's XMP. A re-encoded copy
(JPEG, a crop) usually keeps only the watermark; that is reported, not an error.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.publish import c2pa, watermark


def inspect(data: bytes, trust_anchors: str | None = None, strength: float = 24.0) -> dict[str, Any]:
    """``problems`` is empty when every mark found is consistent and at least one was found."""
    out: dict[str, Any] = {"c2pa": None, "watermark": None, "iptc_digital_source_type": None, "problems": []}
    try:
        mime = c2pa.mime_of(data)
    except c2pa.SigningError:
        out["problems"].append("not a PNG, JPEG or WebP image")
        return out
    rgb = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:  # damaged pixels: still read the manifest
        out["problems"].append(f"image data unreadable: {e}")
    if mime == "image/png" and rgb is not None:
        from pipelines.generate.encode import digital_source_type

        out["iptc_digital_source_type"] = digital_source_type(data)
    got = None
    try:
        got = c2pa.read_manifest(data, mime, trust_anchors)
    except Exception as e:  # a damaged manifest store is a finding, not a crash
        out["problems"].append(f"C2PA manifest unreadable: {type(e).__name__}: {e}")
    if got is not None:
        m = got["manifest"]
        acts = c2pa.actions(m)
        sample = c2pa.assertion(m, "org.synthgen.sample") or {}
        out["c2pa"] = {"state": got["state"], "failures": got["failures"], "root_trusted": not got["untrusted"]
                       and got["state"] == "Trusted", "signer": m.get("signature_info", {}),
                       "actions": [{k: a.get(k) for k in ("action", "digitalSourceType", "softwareAgent", "parameters")}
                                   for a in acts],
                       "ingredients": [i.get("title") for i in m.get("ingredients", [])], "sample": sample}
        if got["failures"]:
            out["problems"].append("C2PA validation failed: " + ", ".join(got["failures"]))
    mark = watermark.decode(rgb, strength) if rgb is not None else None
    if mark is not None:
        out["watermark"] = {"dataset_tag": mark.dataset_tag, "sample_tag": mark.sample_tag}
        sample = (out["c2pa"] or {}).get("sample") or {}
        if sample.get("fingerprint") and (watermark.tag(sample["fingerprint"]), watermark.tag(sample["sample_id"])) \
                != (mark.dataset_tag, mark.sample_tag):
            out["problems"].append("watermark names a different dataset/sample than the C2PA manifest")
    if out["c2pa"] is None and mark is None:
        out["problems"].append("no C2PA manifest and no watermark found")
    return out


def describe(res: dict[str, Any]) -> list[str]:
    lines = []
    c = res["c2pa"]
    if c:
        trust = "root trusted" if c["root_trusted"] else "root not in the trust list"
        lines.append(f"c2pa: {c['state']} ({trust}); signer {c['signer'].get('common_name')} "
                     f"/ {c['signer'].get('issuer')}")
        for a in c["actions"]:
            lines.append(f"  action {a['action']}: {a['digitalSourceType']}; agent {a['softwareAgent']}; "
                         f"{a['parameters']}")
        if c["ingredients"]:
            lines.append(f"  ingredients: {', '.join(c['ingredients'])}")
        if c["sample"]:
            s = c["sample"]
            lines.append(f"  sample {s.get('sample_id')} of dataset {s.get('dataset')} ({s.get('fingerprint')})")
    else:
        lines.append("c2pa: no manifest")
    w = res["watermark"]
    lines.append(f"watermark: dataset tag {w['dataset_tag']}, sample tag {w['sample_tag']}" if w else
                 "watermark: none found")
    if res["iptc_digital_source_type"]:
        lines.append(f"iptc: {res['iptc_digital_source_type']}")
    return lines
