"""``croissant.json``: Croissant 1.0 (JSON-LD) + Croissant-RAI metadata at the dataset root, so dataset
catalogues and ``mlcroissant`` read a published dataset without our own formats.

Built with mlcroissant's own node classes (its ``to_json`` writes the standard ``@context``):
FileSets for the WebDataset and Parquet shards and for ``decisions.parquet`` (its parts), RecordSets
``samples`` (the Parquet shards: id, image, prompt, record) and ``decisions`` (its scalar columns;
list and map columns stay in the files). Everything is a globbed FileSet, not a hashed FileObject:
signed shards differ between reruns in their C2PA salts, and croissant.json must not. RAI fields come from what
the run knows: the job and models (how the data was made), the bias audit (data biases), curation
(preprocessing), the domain (personal and sensitive information).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

CROISSANT = "croissant.json"
_TYPES = {"string": "TEXT", "large_string": "TEXT", "bool": "BOOL", "double": "FLOAT", "float": "FLOAT",
          "int64": "INTEGER", "int32": "INTEGER", "int16": "INTEGER", "int8": "INTEGER", "uint8": "INTEGER",
          "uint16": "INTEGER", "uint32": "INTEGER"}


def _scalar_fields(schema: pa.Schema, rs: str, source: str) -> list[Any]:
    import mlcroissant as mlc

    out = []
    for f in schema:
        dt = _TYPES.get(str(f.type))
        if dt is None:
            continue
        out.append(mlc.Field(id=f"{rs}/{f.name}", name=f.name, data_types=[getattr(mlc.DataType, dt)],
                             source=mlc.Source(file_set=source, extract=mlc.Extract(column=f.name))))
    return out


def bias_findings(curation: dict[str, Any] | None) -> list[str]:
    """Plain sentences from the bias audit of the published samples (the last curation stage): per
    group and perceived attribute, the most frequent value and its share."""
    stages = [s for s in (curation or {}).get("stages") or [] if s.get("audit")]
    if not stages:
        return []
    out = []
    for e in stages[-1]["audit"]:
        p, values = e.get("p") or [], e.get("values") or []
        if not e.get("n") or not p or None in p:
            continue
        top = max(range(len(p)), key=lambda i: p[i])
        lead = ("no value dominates" if max(p) - min(p) < 1e-9 else f"most often '{values[top]}' ({p[top]:.0%})")
        dev = ((e.get("metrics") or {}).get("max_dev") or {}).get("value")
        spread = f"; largest deviation from uniform {dev:.2f}" if dev is not None else ""
        out.append(f"perceived {e['attribute']} (zero-shot CLIP) in group '{e['group']}': n={e['n']}, {lead}; "
                   + ", ".join(f"{v} {q:.0%}" for v, q in zip(values, p)) + spread)
    return out


def build(*, spec: Any, fingerprint: str, counts: dict[str, int], generator: dict[str, Any],
          clip: dict[str, Any], decisions_schema: pa.Schema, decisions_glob: str,
          curation: dict[str, Any] | None, medical: bool, labels: dict[str, Any]) -> dict[str, Any]:
    """The Croissant JSON-LD of a published dataset."""
    import mlcroissant as mlc

    formats = [str(f) for f in spec.output.formats]
    dist: list[Any] = [mlc.FileSet(id="decisions-files", name="decisions", includes=[decisions_glob],
                                   encoding_formats=["application/x-parquet"],
                                   description="One row per planned sample: kept or not, and every reason.")]
    record_sets = [mlc.RecordSet(id="decisions", name="decisions", description="Curation decisions per sample.",
                                 key="decisions/sample_id",
                                 fields=_scalar_fields(decisions_schema, "decisions", "decisions-files"))]
    if "webdataset" in formats:
        dist.append(mlc.FileSet(id="webdataset-shards", name="webdataset-shards", includes=["shards/*.tar"],
                                encoding_formats=["application/x-tar"],
                                description="WebDataset shards: <key>.png (the image), <key>.json (the sample "
                                            "record), <key>.txt (the prompt)."))
    if "parquet" in formats:
        dist.append(mlc.FileSet(id="parquet-shards", name="parquet-shards", includes=["shards/*.parquet"],
                                encoding_formats=["application/x-parquet"],
                                description="Parquet shards: the same samples as the WebDataset shards."))

        def col(name: str, dt: str, desc: str) -> Any:
            return mlc.Field(id=f"samples/{name}", name=name, data_types=[getattr(mlc.DataType, dt)], description=desc,
                             source=mlc.Source(file_set="parquet-shards", extract=mlc.Extract(column=name)))

        record_sets.append(mlc.RecordSet(id="samples", name="samples", key="samples/sample_id",
                                         description="Published (kept) samples.", fields=[
            col("sample_id", "TEXT", "Stable sample id (also the WebDataset key)."),
            col("png", "IMAGE_OBJECT", "The image (PNG with IPTC, C2PA and optional watermark labels)."),
            col("prompt", "TEXT", "The text prompt."),
            col("record", "TEXT", "The sample's provenance record (JSON, schema sample_record.v1)."),
        ]))
    gen_desc = (f"{generator.get('backend', 'diffusion')} model {generator.get('model')} (weights sha256 "
                f"{generator.get('weights_sha256')}), scheduler {generator.get('scheduler')}")
    metadata = mlc.Metadata(
        name=spec.name,
        description=spec.description or f"Synthetic images generated by synthgen job '{spec.name}'.",
        url=None, version="1.0.0", license=["https://creativecommons.org/licenses/by/4.0/"],
        cite_as=f"synthgen dataset {spec.name} (fingerprint {fingerprint})",
        keywords=["synthetic", "AI-generated", "text-to-image"], distribution=dist, record_sets=record_sets,
        data_collection=(f"Synthetic: every image was generated by {gen_desc} from the prompts of the job's "
                         f"manifest ({counts.get('prompts')} prompts, {counts.get('planned')} planned samples, "
                         f"seeds per sample); no image was collected from people or the web."),
        data_collection_type=["Synthetic data (generative model)"],
        data_collection_raw_data="None: images are generated from text prompts and seeds.",
        data_preprocessing_protocol=[
            f"Prompt screen before generation; CLIP scoring with {clip.get('model')} (weights sha256 "
            f"{clip.get('weights_sha256')}); curation (exact/perceptual/semantic dedup, reference sets, safety, "
            f"thresholds, rebalancing as configured) kept {counts.get('kept')} of {counts.get('planned')} "
            "samples; decisions.parquet records every reason."],
        machine_annotation_tools=[f"open_clip {clip.get('model')} (CLIP score, zero-shot perceived attributes)"],
        data_biases=bias_findings(curation) or ["No bias audit was configured for this job."],
        data_limitations=[
            "Generated images reflect the generator's training data and the manifest's prompts, not the world.",
            "Perceived attributes come from zero-shot CLIP and are themselves biased and noisy.",
            "Invisible watermark: survives JPEG quality 90 and 10% crops at >= 256 px, not resizing; "
            "not embedded below 128 px a side." if labels.get("watermark", {}).get("enabled") else
            "No invisible watermark (off for this job).",
        ],
        data_use_cases=["Training and evaluation data for vision models; audits of generator behaviour."],
        personal_sensitive_information=(
            ["Synthetic, no patient data: images are generated; no patient, study or person is depicted or "
             "identifiable; any identifiers are synthetic."] if medical else
            ["None: synthetic images from text prompts; no personal data was collected."]),
        data_social_impact=("AI-generated content, labelled as such (IPTC DigitalSourceType, signed C2PA manifest"
                            + (", invisible watermark" if labels.get("watermark", {}).get("enabled") else "")
                            + ") so it is not mistaken for real data."),
    )
    return metadata.to_json()


def write(store: Any, data: dict[str, Any]) -> dict[str, Any]:
    raw = (json.dumps(data, indent=1, sort_keys=True, default=str) + "\n").encode()
    store.write_bytes(CROISSANT, raw)
    return {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


def publish(store: Any, spec: Any, fingerprint: str, counts: dict[str, int], generator: dict[str, Any],
            clip: dict[str, Any], decisions: pa.Table, files: dict[str, dict[str, Any]],
            curation: dict[str, Any] | None, labeller: Any) -> dict[str, Any]:
    """Build and write ``croissant.json``; returns its index entry. Called before the index is written."""
    from pipelines.publish.label import is_medical

    # decisions.parquet: one file, or a directory of parts (decisions.parquet/part-*.parquet)
    in_parts = any(k.startswith("decisions.parquet/") for k in files)
    data = build(spec=spec, fingerprint=fingerprint, counts=counts, generator=generator, clip=clip,
                 decisions_schema=decisions.schema,
                 decisions_glob="decisions.parquet/*.parquet" if in_parts else "decisions.parquet",
                 curation=curation, medical=is_medical(spec), labels=labeller.describe())
    return write(store, data)
