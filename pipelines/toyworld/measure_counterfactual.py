"""Measure the counterfactual example's edit rates per inpainting strength, through the pipeline itself.

``python -m pipelines.toyworld.measure_counterfactual [--images N] [--strengths 0.4,0.6,0.8,1.0]`` runs
``jobs/counterfactual.yaml`` (local Ray, a temporary output) once per strength with N images per
direction and reads the finding-QC column of the decisions table (the toy world's judge on every
edited sample): how often the nodule was added in the left lung (and how often read as large), and
how often it was removed. The figures the job's comment and the README quote come from this.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipelines.toyworld import counterfactual as cf

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "counterfactual.yaml"


def job_copy(folder: Path, images: int, strength: float | None = None, formats: list[str] | None = None,
             unit_size: int | None = None) -> Path:
    """The shipped job with absolute paths and its inputs rendered into ``folder``; ``strength``,
    ``formats`` and ``unit_size`` replace the job's where given (the end-to-end test uses it too)."""
    spec = yaml.safe_load(JOB.read_text())
    spec["manifest"]["path"] = str(cf.write(folder / "inputs", num_images=images))
    spec["generator"]["model"] = str((JOB.parent / spec["generator"]["model"]).resolve())
    for k in ("pretrained", "model_config_file", "tokenizer"):
        spec["clip"][k] = str((JOB.parent / spec["clip"][k]).resolve())
    spec["output"]["url"] = str(folder / "out")
    if strength is not None:
        spec["generator"]["strength"] = strength
    if formats is not None:
        spec["output"]["formats"] = formats
    if unit_size is not None:
        spec["unit_size"] = unit_size
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def rates(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """Edit rates from the decisions rows' ``qc_pred`` (judge readings) per direction."""
    def read(prompt_id: str) -> list[dict[str, str]]:
        return [dict(r["qc_pred"] or []) for r in decisions if r["prompt_id"] == prompt_id]

    added, removed = read("add-nodule-left"), read("remove-nodule-left")
    hit = [p.get("nodule") == "present" and p.get("nodule_side") == "left" for p in added]
    return {"added": sum(hit) / len(added), "added_large": sum(h and p.get("nodule_size") == "large"
                                                             for h, p in zip(hit, added)) / len(added),
            "removed": sum(p.get("nodule") == "absent" for p in removed) / len(removed),
            "n_per_direction": len(added)}


def measure(images: int, strengths: list[float]) -> dict[str, Any]:
    from pipelines.config import load_job
    from pipelines.contracts.decisions import DECISIONS, read_table
    from pipelines.execution.runner import run
    from pipelines.io.store import Store
    from pipelines.publish.shards import read_index

    out: dict[str, Any] = {}
    for s in strengths:
        with tempfile.TemporaryDirectory() as tmp:
            run(load_job(job_copy(Path(tmp), images, s, formats=["webdataset"])), quiet=True, overwrite=True)
            store = Store(str(Path(tmp) / "out"))
            table = read_table(store.fs, store.root, read_index(store) or {}, DECISIONS, ["prompt_id", "qc_pred"])
            out[f"{s:g}"] = rates(table.to_pylist())
        print(f"strength {s:g}: {json.dumps(out[f'{s:g}'])}", flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=128, help="images per direction")
    parser.add_argument("--strengths", default="0.4,0.6,0.8,1.0")
    args = parser.parse_args()
    measure(args.images, [float(x) for x in args.strengths.split(",")])
