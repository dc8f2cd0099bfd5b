"""Inputs of the toy world's counterfactual example (``jobs/counterfactual.yaml``): two chest phantoms
that differ only in a left-lung nodule, and a manifest that edits each towards the other by inpainting
the ``left_lung`` region, plus an outpainted phantom.

Rendered, not drawn by a model, so the "before" of each pair is known exactly. Regenerate the
committed files with ``python -m pipelines.toyworld.counterfactual jobs/counterfactual``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.toyworld import world

SEED = 7  # the phantom's own seed (body, lungs, ribs, noise): the same in both images
NORMAL = world.Attributes(domain="phantom")
NODULE = world.Attributes(domain="phantom", nodule_side="left", nodule_size="large")
ABSENT = {"nodule": "absent", "nodule_side": "none", "nodule_size": "none"}
PRESENT = {"nodule": "present", "nodule_side": "left", "nodule_size": "large"}


def phantoms(size: int = world.DEFAULT_SIZE) -> dict[str, np.ndarray]:
    """The pair: ``normal`` (no nodule) and ``nodule``, the same pixels but for a large nodule in the
    left lung. The renderer draws its noise after the nodule, so the nodule is cut from its own render
    (where it differs from the normal one by far more than the noise) into the normal phantom."""
    normal, drawn = world.render(NORMAL, SEED, size), world.render(NODULE, SEED, size)
    nodule = np.abs(drawn.astype(np.int16) - normal.astype(np.int16)).max(axis=2) > 20
    return {"normal": normal, "nodule": np.where(nodule[..., None], drawn, normal)}


def manifest_rows(prefix: str, num_images: int = 8) -> list[dict[str, object]]:
    """Add the nodule to the normal phantom, remove it from the other, outpaint the normal one by 8 px
    a side (its height/width are the output size: 32 + 2 x 8). ``prefix``: where the PNGs are."""
    def row(pid: str, prompt: str, src: str, attrs: dict[str, str], n: int = num_images,
            **edit: object) -> dict[str, object]:
        return {"prompt_id": pid, "prompt": prompt, "seed": 0, "num_images": n,
                "init_image": f"{prefix}/{src}.png", "attributes": sorted(attrs.items()), **edit}

    return [
        row("add-nodule-left", "chest radiograph with a large nodule in the left lung", "normal",
            {**PRESENT, "edit": "add"}, mask_region="left_lung"),
        row("remove-nodule-left", "chest radiograph with no nodule", "nodule", {**ABSENT, "edit": "remove"},
            mask_region="left_lung"),
        row("outpaint-normal", "chest radiograph with no nodule", "normal", {"edit": "outpaint"},
            max(1, num_images // 4), outpaint=8, height=48, width=48),
    ]


def write(folder: Path, prefix: str | None = None, num_images: int = 8) -> Path:
    """The two PNGs and ``manifest.parquet`` under ``folder``; the manifest's image paths start with
    ``prefix`` (default: ``folder`` as given, so a relative folder gives paths relative to the cwd)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in phantoms().items():
        Image.fromarray(img).save(folder / f"{name}.png")
    rows = manifest_rows(prefix or str(folder), num_images)
    schema = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()),
                        ("num_images", pa.int64()), ("init_image", pa.string()),
                        ("attributes", pa.map_(pa.string(), pa.string())), ("mask_region", pa.string()),
                        ("outpaint", pa.int64()), ("height", pa.int64()), ("width", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "manifest.parquet")
    return folder / "manifest.parquet"


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "jobs/counterfactual")))
