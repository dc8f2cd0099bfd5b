"""Typed job spec. Validated once at the edge (``load_job``); unknown keys are errors."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, field_validator,
                      model_validator)

from pipelines.errors import SpecError

if TYPE_CHECKING:
    from pipelines.io.store import Store


class Strict(BaseModel):
    # allow_inf_nan=False: YAML's .nan/.inf pass every ge/le bound silently and would run.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TemplateSpec(Strict):
    """A prompt grid: every combination of slot values, times ``seeds``."""

    template: str = Field(description="Python format string, e.g. 'a {colour} {shape}'.")
    slots: dict[str, list[str]]
    seeds: list[int] = Field(default=[0], min_length=1)
    num_images: int = Field(default=1, ge=1, le=10000)
    negative_prompt: str | None = None
    id_prefix: str = Field(default="p", pattern=r"^[A-Za-z0-9_-]+$")
    attributes: dict[str, str] = Field(default_factory=dict, description="Fixed attributes added to every row "
                                       "of this grid (e.g. {nodule: present}); slot values win on a clash.")

    @model_validator(mode="after")
    def _slots_cover_template(self) -> "TemplateSpec":
        import string

        names = {f for _, f, _, _ in string.Formatter().parse(self.template) if f}
        missing = names - set(self.slots)
        if missing:
            raise ValueError(f"template uses slots not defined in 'slots': {sorted(missing)}")
        for k, v in self.slots.items():
            if not v:
                raise ValueError(f"slot '{k}' has no values")
        return self


class ManifestSpec(Strict):
    """Exactly one of ``path`` (Parquet file/dir, any fsspec URL) or ``template``."""

    path: str | None = None
    template: Annotated[Annotated[TemplateSpec, Tag("TemplateSpec")] | Annotated[list[TemplateSpec], Tag("list")],
                        Discriminator(lambda v: "list" if isinstance(v, list) else "TemplateSpec")] | None = Field(
        default=None, description="A grid, or a list of grids (their rows concatenated; id_prefix must differ).")
    storage_options: dict[str, Any] | None = Field(default=None, description="For path; default: output's.")

    @model_validator(mode="after")
    def _one_source(self) -> "ManifestSpec":
        if (self.path is None) == (self.template is None):
            raise ValueError("manifest needs exactly one of 'path' or 'template'")
        return self


class GeneratorSpec(Strict):
    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        """A registered name or a 'module:Class' path; the class is imported only where it runs."""
        from pipelines.generate.backends import BACKENDS

        if v not in BACKENDS and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(f"unknown backend {v!r}: one of {', '.join(BACKENDS)}, or 'package.module:Class'")
        return v

    backend: str = Field(default="diffusion", description="diffusion, gan, style, procedural (the toy world's "
                         "renderer), or an installed class as 'package.module:Class' (pipelines.generate.backends).")
    model: str = Field(description="Hub id or local path/URL for from_pretrained (style: a VGG-19 "
                       ".safetensors file or a diffusers VAE / pipeline folder).")
    revision: str | None = None
    steps: int = Field(default=20, ge=1, le=1000)
    guidance_scale: float = Field(default=5.0, ge=0.0)
    height: int = Field(default=64, ge=8, le=4096)
    width: int = Field(default=64, ge=8, le=4096)
    scheduler: str | None = Field(default=None, description="diffusers scheduler class name to swap in.")
    strength: float = Field(default=0.6, gt=0.0, le=1.0, description="img2img / inpainting strength.")
    style_weight: float = Field(default=0.1, gt=0.0, description="style backend: weight of the style "
                                "(feature statistics) loss relative to the content loss.")
    batch_size: int = Field(default=8, ge=1)
    device: str = "cpu"
    # The fast path (diffusion backend). Unset keys default by device: what suits a GPU on CUDA, and
    # exactly the old behaviour (float32, no layout change) elsewhere, so CPU datasets stay identical.
    dtype: Literal["float32", "float16", "bfloat16"] = Field(default=None, description="Weights and compute "  # type: ignore[assignment]
                                                             "dtype; default float16 on CUDA, else float32.")
    variant: str | None = Field(default=None, description="Weights variant files to load, e.g. 'fp16'.")
    attention: Literal["sdpa", "eager"] = Field(default="sdpa", description="sdpa: torch's "
                                                "scaled_dot_product_attention (diffusers' default on torch 2).")
    channels_last: bool = Field(default=None, description="UNet/VAE in channels_last memory format; "  # type: ignore[assignment]
                                "default on for CUDA.")
    compile: bool = Field(default=False, description="torch.compile the denoiser and VAE decoder.")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "reduce-overhead"
    pad_batches: bool = Field(default=None, description="Pad every batch to batch_size (padding discarded) "  # type: ignore[assignment]
                              "so shapes stay fixed; default: on with compile.")
    vae_slicing: bool = Field(default=None, description="Decode one image at a time; default on from "  # type: ignore[assignment]
                              "1024x1024 pixels.")
    vae_tiling: bool = Field(default=False, description="Decode in tiles (very large sizes; may show seams).")
    allow_pickle: bool = Field(default=False, description="Allow non-safetensors (pickle) weights. Off: unsafe.")
    trust_remote_code: bool = Field(default=False, description="Allow custom pipeline code from the model repo.")

    @model_validator(mode="before")
    @classmethod
    def _device_defaults(cls, data: Any) -> Any:
        """Fill the unset fast-path keys from the device, so the resolved spec (and its fingerprint)
        says what actually ran."""
        if not isinstance(data, dict):
            return data
        d = dict(data)
        cuda = str(d.get("device", "cpu")).startswith("cuda")
        try:
            big = int(d.get("height") or 64) * int(d.get("width") or 64) >= 1024 * 1024
        except (TypeError, ValueError):
            big = False  # the field's own validation reports it
        for key, value in (("dtype", "float16" if cuda else "float32"), ("channels_last", cuda),
                           ("pad_batches", d.get("compile") is True), ("vae_slicing", big)):
            if d.get(key) is None:
                d[key] = value
        return d


class ClipSpec(Strict):
    model: str = Field(description="open_clip model name, e.g. 'ViT-B-32' or a registered custom config.")
    pretrained: str | None = Field(default=None, description="open_clip tag or path to weights file.")
    model_config_file: str | None = Field(default=None, description="Custom open_clip config JSON to register.")
    tokenizer: str | None = Field(default=None, description="HF tokenizer dir; default is open_clip's.")
    batch_size: int = Field(default=64, ge=1)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class PoolSpec(Strict):
    """Ray resources of one actor pool. Fractional CPUs keep small clusters from deadlocking."""

    size: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.5, ge=0.0)
    num_gpus: float = Field(default=0.0, ge=0.0)
    torch_threads: int = Field(default=1, ge=1)
    max_units_in_flight: int = Field(default=2, ge=1, description="Units queued per actor: 2 overlaps "
                                     "I/O with compute; more lets one early actor take the whole queue.")


class ResourcesSpec(Strict):
    generate: PoolSpec = PoolSpec(size=2)
    embed: PoolSpec = PoolSpec(size=1, num_cpus=0.25)
    encode: PoolSpec = Field(default=PoolSpec(size=2, num_cpus=0.25), description="CPU tasks beside the "
                             "generators (input decoding, PNG encoding, hashes): size = tasks at once, num_cpus each.")
    ray_num_cpus: int | None = Field(default=None, description="CPUs for a local cluster (default: all).")
    actor_start_timeout_s: int = Field(default=600, ge=1, description="Wait this long for every pool actor to "
                                       "start before streaming; past it, fail instead of hanging (a pool that "
                                       "does not fit the cluster).")
    autoscaler: bool | None = Field(default=None, description="Can the cluster add nodes? Without one, pools "
                                    "the cluster can never host fail at once; with one, Ray waits up to "
                                    "actor_start_timeout_s. Default: none on a local cluster, asked of Ray's "
                                    "GCS on a joined one (RAY_ADDRESS).")


class OutputSpec(Strict):
    url: str = Field(description="Dataset root: local path or fsspec URL (s3://bucket/prefix).")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    formats: list[Literal["webdataset", "parquet", "dicom"]] = ["webdataset", "parquet"]
    shard_max_samples: int = Field(default=1000, ge=1)
    shard_max_bytes: int = Field(default=256 * 2**20, ge=1024)
    keep_staging: bool = False
    retries: int = Field(default=6, ge=1, description="Attempts per storage operation (backoff with jitter).")
    retry_base_delay_s: float = Field(default=0.2, ge=0.0)
    lease_stale_after_s: float = Field(default=60.0, gt=0, description="A lease without heartbeat this long is taken over.")
    lease_wait_s: float | None = Field(default=None, ge=0, description="How long a run waits for another run's "
                                       "lease to go stale before failing with exit 3 (default 1.5 x "
                                       "lease_stale_after_s); a lease whose holder died on this host is taken "
                                       "over at once.")

    @field_validator("url")
    @classmethod
    def _safe_url(cls, v: str) -> str:
        import fsspec

        protocol = v.split("://", 1)[0] if "://" in v else "file"
        try:
            fsspec.get_filesystem_class(protocol)
        except (ValueError, ImportError) as e:
            raise ValueError(f"unknown or unavailable storage scheme '{protocol}': {e}") from None
        path = v.split("://", 1)[-1]
        if any(part == ".." for part in path.split("/")) or any(ord(c) < 32 for c in v):
            raise ValueError("must not contain '..' components or control characters")
        return v

    def store(self) -> "Store":
        from pipelines.io.store import Store

        return Store(self.url, self.storage_options, retries=self.retries, retry_base_delay=self.retry_base_delay_s)


class ScreenSpec(Strict):
    """Prompt screen (DESIGN step 3): rules applied to prompt text before any GPU time.

    Text and rules are compared after NFKC normalisation, case folding, removal of invisible format
    characters (zero-width joiners, ...) and diacritics, and whitespace collapsing (``pipelines.plan.screen``)."""

    enabled: bool = True
    default_rules: bool = Field(default=True, description="Also apply the bundled rules (pipelines.plan.screen.DEFAULT_RULES).")
    rule_files: list[str] = Field(default_factory=list, description="Files of rules: one term per line, "
                                  "'re:' prefix for a regex, '#' comments.")
    terms: list[str] = Field(default_factory=list, description="Blocked terms (whole words/phrases).")
    regexes: list[str] = Field(default_factory=list, description="Blocked patterns, matched on normalised text.")
    fields: list[Literal["prompt", "negative_prompt"]] = ["prompt"]

    @model_validator(mode="after")
    def _regexes_compile(self) -> "ScreenSpec":
        import re

        for r in self.regexes:
            try:
                re.compile(r)
            except re.error as e:
                raise ValueError(f"regex {r!r} does not compile: {e}") from None
        return self


class PerceptualDedupSpec(Strict):
    enabled: bool = False
    max_distance: int = Field(default=4, ge=0, le=24, description="pHash Hamming distance counted as duplicate.")


class SemanticDedupSpec(Strict):
    enabled: bool = False
    eps: float = Field(default=0.05, gt=0.0, lt=2.0, description="Duplicates when image cosine >= 1 - eps.")
    cluster_size: int = Field(default=1000, ge=2, description="Mean k-means cluster size (n / k).")
    spill: float = Field(default=0.05, ge=0.0, le=2.0, description="Also compare a point with its second-nearest "
                         "cluster when that centroid's cosine is within this of the nearest's.")
    seed: int = 0


class DedupSpec(Strict):
    exact: bool = Field(default=True, description="Equal decoded-pixel hash.")
    perceptual: PerceptualDedupSpec = PerceptualDedupSpec()
    semantic: SemanticDedupSpec = SemanticDedupSpec()
    keep: Literal["first", "best_clip"] = Field(default="first", description="Which sample of a duplicate set "
                                                "survives: first by sample id, or best CLIP score.")


class PriorDatasetSpec(Strict):
    """An earlier published dataset (its index, decisions and embeddings): new samples that duplicate
    its kept samples are dropped, by the same exact/perceptual/semantic tests as within the run."""

    url: str
    storage_options: dict[str, Any] = Field(default_factory=dict)


class ReferenceSetSpec(Strict):
    """A protected set the output must not resemble: a folder of images, or precomputed embeddings
    (Parquet with an ``image_emb``/``embedding`` column, or ``.npy``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    threshold: float = Field(default=0.95, ge=-1.0, le=1.0, description="Top-1 cosine at or above it: flagged.")
    action: Literal["filter", "report"] = "filter"


class SafetyConceptSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    prompts: list[str] = Field(min_length=1)
    threshold: float = Field(description="Flag at or above: a cosine, or a probability when 'negatives' is set.")
    negatives: list[str] = Field(default_factory=list, description="Contrast prompts: the score becomes the "
                                 "softmax probability of the concept against them.")


class SafetyClassifierSpec(Strict):
    path: str = Field(description="safetensors linear head on image embeddings: 'weight' (C, D), 'bias' (C,), "
                      "metadata 'names' (JSON list).")
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)


class SafetySpec(Strict):
    mode: Literal["off", "report", "filter"] = "off"
    concepts: list[SafetyConceptSpec] = Field(default_factory=list)
    classifier: SafetyClassifierSpec | None = None
    logit_scale: float | None = Field(default=None, gt=0.0, description="Softmax scale for 'negatives'; "
                                      "default: the CLIP model's own.")


class BiasSpec(Strict):
    attributes: dict[str, dict[str, str | list[str]]] = Field(
        default_factory=dict, description="attribute -> value -> prompt(s) for zero-shot perceived attributes.")
    group_by: list[str] | None = Field(default=None, description="Manifest attribute keys that define prompt "
                                       "groups (default: every key a sample has; [] = one group).")
    logit_scale: float | None = Field(default=None, gt=0.0, description="Default: the CLIP model's own.")
    bootstrap: int = Field(default=1000, ge=20, le=100000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _two_values(self) -> "BiasSpec":
        for a, vocab in self.attributes.items():
            if len(vocab) < 2:
                raise ValueError(f"bias attribute '{a}' needs at least two values")
        return self


class RebalanceSpec(Strict):
    attribute: str = Field(description="A key of curation.bias.attributes (perceived, per sample).")
    target: Literal["uniform"] | dict[str, float] = "uniform"
    prefer: Literal["best_clip", "first"] = "best_clip"


class QcSpec(Strict):
    """Finding QC (pipelines/curation/qc.py): each stated manifest attribute checked against the image."""

    attributes: list[str] = Field(min_length=1, description="Manifest attribute keys to check, e.g. "
                                  "[nodule, nodule_side, nodule_size].")
    classifier: str = Field(default="zero_shot", description="'zero_shot' (CLIP embedding vs the prompts of "
                            "curation.bias.attributes[key]) or 'module:callable', a pixel classifier "
                            "image -> {key: value} run where the pixels are (e.g. pipelines.toyworld.judge:judge).")
    mode: Literal["filter", "report"] = Field(default="filter", description="filter: a disagreement rejects the "
                                              "sample (qc:<key>); report: recorded only.")

    @field_validator("classifier")
    @classmethod
    def _classifier_form(cls, v: str) -> str:
        if v != "zero_shot" and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError("must be 'zero_shot' or 'package.module:callable'")
        return v


class TargetsSpec(Strict):
    """Quotas (DESIGN step 8, ``pipelines/curation/targets.py``): groups short of ``per_group`` kept samples
    get further generation rounds; then exactly the quota per group is published."""

    per_group: int | dict[str, int] = Field(description="Kept samples wanted per group: one number, or a map "
                                            "from group key ('k=v,k2=v2' over group_by, in its order; '*': every "
                                            "group not named) to number; a group the map does not cover is "
                                            "not targeted.")
    group_by: list[str] = Field(min_length=1, description="Manifest attribute keys that define the groups.")
    max_rounds: int = Field(default=3, ge=0, le=50, description="Generation rounds after the manifest's own.")
    overshoot: float = Field(default=1.25, ge=1.0, le=10.0, description="A round generates shortfall / "
                             "acceptance x overshoot samples per short group.")
    min_tries: int = Field(default=16, ge=1, description="Samples a group is tried on before an acceptance "
                           "below 2% declares it unachievable.")
    max_per_round: int | None = Field(default=None, ge=1, description="Cap on one group's samples per round.")
    select: Literal["best_clip", "plan_order"] = Field(default="best_clip", description="Which kept samples "
                                                       "fill a quota: highest CLIPScore, or earliest planned.")

    @field_validator("per_group")
    @classmethod
    def _counts(cls, v: int | dict[str, int]) -> int | dict[str, int]:
        counts = [v] if isinstance(v, int) else list(v.values())
        if not counts or any(c < 0 for c in counts) or not any(counts):
            raise ValueError("must be a positive number, or a map of non-negative numbers not all zero")
        return v

    @model_validator(mode="after")
    def _keys_match(self) -> "TargetsSpec":
        if isinstance(self.per_group, dict):
            for key in self.per_group:
                names = [part.split("=", 1)[0] for part in key.split(",")]
                if key != "*" and (names != self.group_by or any("=" not in part for part in key.split(","))):
                    raise ValueError(f"per_group key {key!r} is not 'k=v,...' over group_by {self.group_by}")
        return self


class CurationSpec(Strict):
    """Curation (DESIGN step 7): dedup, safety, thresholds, rebalancing. Changing it reuses staged units."""

    dedup: DedupSpec = DedupSpec()
    prior_datasets: list[PriorDatasetSpec] = Field(default_factory=list)
    references: list[ReferenceSetSpec] = Field(default_factory=list)
    safety: SafetySpec = SafetySpec()
    min_clip_score: float | None = Field(default=None, description="Drop samples whose CLIPScore is below.")
    bias: BiasSpec = BiasSpec()
    rebalance: RebalanceSpec | None = None
    qc: QcSpec | None = None
    targets: TargetsSpec | None = None

    @model_validator(mode="after")
    def _rebalance_vocabulary(self) -> "CurationSpec":
        if self.qc is not None and self.qc.classifier == "zero_shot":
            missing = [k for k in self.qc.attributes if k not in self.bias.attributes]
            if missing:
                raise ValueError(f"qc.classifier zero_shot needs prompts for {missing} in bias.attributes")
        rb = self.rebalance
        if rb is not None:
            vocab = self.bias.attributes.get(rb.attribute)
            if vocab is None:
                raise ValueError(f"rebalance.attribute '{rb.attribute}' is not in bias.attributes")
            if isinstance(rb.target, dict):
                extra = set(rb.target) - set(vocab)
                if extra or any(v < 0 for v in rb.target.values()) or sum(rb.target.values()) <= 0:
                    raise ValueError(f"rebalance.target must weight values of '{rb.attribute}' "
                                     f"({sorted(vocab)}) with non-negative weights, not all zero")
        if self.safety.mode != "off" and not (self.safety.concepts or self.safety.classifier):
            raise ValueError("safety.mode is on but no concepts or classifier are configured")
        return self


class C2paSpec(Strict):
    """Signed C2PA manifest on every published image (``pipelines.publish.c2pa``)."""

    enabled: bool = True
    cert: str | None = Field(default=None, description="PEM certificate chain, end-entity first; default "
                             "$SYNTHGEN_C2PA_CERT, else a local development chain (valid, root untrusted).")
    key: str | None = Field(default=None, description="PEM private key file (e.g. a mounted secret); default "
                            "$SYNTHGEN_C2PA_KEY. Read only where images are signed; never recorded.")


class WatermarkSpec(Strict):
    """Invisible DWT-DCT watermark naming the dataset and sample (``pipelines.publish.watermark``)."""

    enabled: bool | None = Field(default=None, description="Default: on for natural images, off for medical.")
    strength: float = Field(default=24.0, gt=0.0, le=128.0, description="Quantisation step of the marked "
                            "coefficient (24: at most 1.5 grey levels per 8x8 block).")


class ProvenanceSpec(Strict):
    domain: Literal["natural", "medical"] | None = Field(default=None, description="Default: medical when "
                                                          "output.formats has dicom, else natural.")
    c2pa: C2paSpec = C2paSpec()
    watermark: WatermarkSpec = WatermarkSpec()


class JobSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    manifest: ManifestSpec
    generator: GeneratorSpec
    clip: ClipSpec
    unit_size: int = Field(default=256, ge=1, description="Samples per work unit (the unit of resumption).")
    max_failed_fraction: float = Field(default=0.0, ge=0.0, le=1.0,
                                       description="Failed samples tolerated before the run exits non-zero.")
    resources: ResourcesSpec = ResourcesSpec()
    screen: ScreenSpec = ScreenSpec()
    curation: CurationSpec = CurationSpec()
    output: OutputSpec
    provenance: ProvenanceSpec = ProvenanceSpec()

    @model_validator(mode="after")
    def _watermark_fits(self) -> "JobSpec":
        if not self.provenance.watermark.enabled:
            return self
        from pipelines.publish.watermark import MIN_SIDE

        g = self.generator
        if min(g.height, g.width) < MIN_SIDE:
            raise ValueError(f"provenance.watermark.enabled needs images of at least {MIN_SIDE}x{MIN_SIDE} "
                             f"(generator is {g.width}x{g.height}); the mark does not fit smaller ones")
        return self

    # Where the spec came from, and the paths the loader made absolute as the file wrote them
    # (dotted key -> value): what is published shows these, never a path of the machine that ran it.
    _source: str = PrivateAttr(default="job spec")
    _written: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        return self._source

    def as_written(self, key: str) -> Any:
        """The value at dotted ``key`` as the spec said it (a spec-relative path as written)."""
        if key in self._written:
            return self._written[key]
        value: Any = self
        for part in key.split("."):
            value = value[int(part)] if isinstance(value, (list, tuple)) else getattr(value, part)
        return value

    def published_dump(self) -> dict[str, Any]:
        """``model_dump()`` with every resolved path put back as written: for provenance and fingerprints."""
        data = self.model_dump()
        for key, value in self._written.items():
            *parents, last = key.split(".")
            node: Any = data
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node[int(last) if isinstance(node, list) else last] = value
        return data

    def with_overrides(self, *, out: str | None = None, manifest: str | None = None) -> "JobSpec":
        """CLI overrides, re-validated through the same models."""
        data = self.model_dump()
        if out:
            data["output"]["url"] = out
        if manifest:
            data["manifest"] = {"path": manifest}
        spec = JobSpec.model_validate(data)
        spec._source = self._source
        spec._written = {k: v for k, v in self._written.items() if not (manifest and k.startswith("manifest."))}
        return spec


def _resolve_relative(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """Model and manifest paths that start with '.' or exist beside the spec are relative to the
    spec file, so jobs run from any cwd; hub ids and URLs pass through untouched."""

    def fix(v: str | None) -> str | None:
        if not v or "://" in v or Path(v).is_absolute():
            return v
        cand = base / v
        return os.path.normpath(cand) if cand.exists() or v.startswith(".") else v

    m = spec.get("manifest") or {}
    if isinstance(m, dict) and isinstance(m.get("path"), str):
        m["path"] = fix(m["path"])
    for section, keys in (("generator", ["model"]), ("clip", ["pretrained", "model_config_file", "tokenizer"])):
        sec = spec.get(section)
        if isinstance(sec, dict):
            for k in keys:
                if isinstance(sec.get(k), str):
                    sec[k] = fix(sec[k])
    _resolve_curation_paths(spec, fix)
    return spec


def _resolve_curation_paths(spec: dict[str, Any], fix: Any) -> None:
    """Rule files, reference sets, prior datasets and the safety head, relative to the spec file."""
    scr = spec.get("screen")
    if isinstance(scr, dict) and isinstance(scr.get("rule_files"), list):
        scr["rule_files"] = [fix(v) if isinstance(v, str) else v for v in scr["rule_files"]]
    cur = spec.get("curation")
    if not isinstance(cur, dict):
        return
    for key in ("references", "prior_datasets"):
        for item in cur.get(key) or []:
            if isinstance(item, dict) and isinstance(item.get("url"), str):
                item["url"] = fix(item["url"])
    clf = (cur.get("safety") or {}).get("classifier") if isinstance(cur.get("safety"), dict) else None
    if isinstance(clf, dict) and isinstance(clf.get("path"), str):
        clf["path"] = fix(clf["path"])


def load_job(path: str | Path) -> JobSpec:
    """Read a YAML job spec (safe_load) into a validated ``JobSpec``; errors name the file and field."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"{p}: job spec not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SpecError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p}: a job spec must be a mapping at the top level")
    written = copy.deepcopy(raw)
    raw = _resolve_relative(raw, p.resolve().parent)
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"] if x not in _UNION_TAGS)
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{p}: field '{loc}': {msg}")
        raise SpecError("\n".join(lines)) from None
    spec._source = str(path)
    spec._written = _changed_strings(written, raw)
    return spec


# Tags of the discriminated unions above: pydantic puts them in error locations; users wrote none of them.
_UNION_TAGS = {"TemplateSpec", "list"}


def _changed_strings(before: Any, after: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys of the strings ``_resolve_relative`` rewrote, with their values as written."""
    if isinstance(before, str) and isinstance(after, str):
        return {prefix.rstrip("."): before} if before != after else {}
    pairs: Any = ()
    if isinstance(before, dict) and isinstance(after, dict):
        pairs = ((k, before[k], after[k]) for k in before if k in after)
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        pairs = ((str(i), b, a) for i, (b, a) in enumerate(zip(before, after)))
    out: dict[str, str] = {}
    for k, b, a in pairs:
        out.update(_changed_strings(b, a, f"{prefix}{k}."))
    return out
