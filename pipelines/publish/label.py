"""The marks each published image gets, applied once per kept image where its shard is written:
watermark (pixels), IPTC DigitalSourceType for its generation kind (XMP), then a signed C2PA manifest.

Done at publish rather than at generation: only kept images are signed, the dataset fingerprint
(which the watermark names) is known, curation still sees the unmarked pixels it staged, and the
signing key is needed only where publishing runs. ``Labeller`` holds paths and settings only, so it
pickles to Ray workers; each process builds its signer once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipelines.generate.encode import XMP_KEY, encode_png, pixel_sha256, source_type_for
from pipelines.publish import c2pa, watermark

if TYPE_CHECKING:
    from pipelines.config import JobSpec


def is_medical(spec: "JobSpec") -> bool:
    domain = spec.provenance.domain
    return domain == "medical" if domain else "dicom" in [str(f) for f in spec.output.formats]


@dataclass(frozen=True)
class Labeller:
    dataset: str
    fingerprint: str
    signing: c2pa.SigningKey | None = None
    watermark_strength: float | None = None  # None: no watermark

    @classmethod
    def for_job(cls, spec: "JobSpec", fingerprint: str) -> "Labeller":
        p = spec.provenance
        wm_on = p.watermark.enabled if p.watermark.enabled is not None else not is_medical(spec)
        key = c2pa.resolve_key(p.c2pa.cert, p.c2pa.key) if p.c2pa.enabled else None
        return cls(spec.name, fingerprint, key, p.watermark.strength if wm_on else None)

    def describe(self) -> dict[str, Any]:
        """For provenance.json: the signer's public identity and the watermark's method. No key."""
        return {
            "c2pa": ({"enabled": True, "signer": self.signing.describe(), "time_stamp_authority": None}
                     if self.signing else {"enabled": False}),
            "watermark": ({"enabled": True, "method": watermark.METHOD, "strength": self.watermark_strength,
                           "dataset_tag": watermark.tag(self.fingerprint), "min_side": watermark.MIN_SIDE}
                          if self.watermark_strength else {"enabled": False}),
        }

    def __call__(self, png: bytes, record: dict[str, Any], row: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """The published PNG and its record (pixel hash and labels updated)."""
        gen = record["generator"]
        inputs = {k: row.get(k) for k in ("init_image", "mask_image", "style_image") if row.get(k)}
        source_type = source_type_for(gen.get("backend"), *inputs.values())
        with Image.open(io.BytesIO(png)) as im:
            pixels = np.asarray(im)  # as staged: 8-bit RGB or grey, or 16-bit grey
            text = {k: v for k, v in im.info.items() if isinstance(v, str) and k != XMP_KEY}
        labels: dict[str, Any] = {"digital_source_type": source_type}
        if self.watermark_strength:
            if pixels.dtype != np.uint8 or (pixels.ndim == 3 and pixels.shape[2] != 3):
                labels["watermark"] = {"method": watermark.METHOD, "payload": None,
                                       "skipped": "not an 8-bit RGB or grey image"}
            elif min(pixels.shape[:2]) >= watermark.MIN_SIDE:
                rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
                mark = watermark.mark_for(self.fingerprint, record["sample_id"])
                marked = watermark.embed(rgb, mark, self.watermark_strength)
                pixels = marked if pixels.ndim == 3 else marked[..., 0]
                labels["watermark"] = {"method": watermark.METHOD, "payload": mark.payload}
            else:
                labels["watermark"] = {"method": watermark.METHOD, "payload": None,
                                       "skipped": f"below {watermark.MIN_SIDE} px a side"}
        out = encode_png(pixels, text, source_type)
        if self.signing is not None:
            sample = {"dataset": self.dataset, "fingerprint": self.fingerprint, "sample_id": record["sample_id"],
                      "prompt": record.get("prompt"), "seed": record.get("seed"),
                      "watermark": (labels.get("watermark") or {}).get("payload")}
            edit = {k: row[k] for k in ("mask_region", "outpaint") if row.get(k)}
            if edit:  # the mask an edit made has no file to be an ingredient: the manifest names the edit
                sample["edit"] = edit
            manifest = c2pa.definition(title=f"{record['sample_id']}.png",
                                       label=c2pa.manifest_label(self.fingerprint, record["sample_id"]),
                                       source_type=source_type, generator=gen, sample=sample)
            ingredients = [(f"{k}: {_name(u)}", _read_input(u))
                           for k, u in inputs.items()]
            out = c2pa.sign_png(out, manifest, self.signing, ingredients)
            labels["c2pa"] = {"manifest": f"urn:c2pa:{manifest['label'].split(':')[-1]}"}
        rec = {**record, "image": {**record["image"], "pixel_sha256": pixel_sha256(pixels)},
               "ai_generated": {**record.get("ai_generated", {}), **labels}}
        return out, rec


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


@lru_cache(maxsize=64)
def _read_input(url: str) -> bytes:
    """An input image's bytes, for the manifest's ingredient (cached: many samples share one); read
    as the generator's input stage reads it (credentials from the environment)."""
    import fsspec

    with fsspec.open(url, "rb") as f:
        return f.read()
