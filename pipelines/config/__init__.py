"""Typed job spec. Validated once at the edge (``load_job``); unknown keys are errors.

The job and its generation, output and provenance sections are here; curation's in ``config/curation.py``,
the file loader in ``config/load.py``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Discriminator, Field, PrivateAttr, Tag, field_validator, model_validator

from pipelines.config.base import Strict

if TYPE_CHECKING:
    from pipelines.io.store import Store

from pipelines.config.curation import *  # noqa: F401,F403 - re-exported: every spec model imports from here
from pipelines.config.curation import CurationSpec


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




from pipelines.config.load import load_job  # noqa: E402 - after JobSpec, which it needs
