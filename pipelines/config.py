"""Typed job spec. Validated once at the edge (``load_job``); unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import SpecError

if TYPE_CHECKING:
    from .storage import Store


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TemplateSpec(Strict):
    """A prompt grid: every combination of slot values, times ``seeds``."""

    template: str = Field(description="Python format string, e.g. 'a {colour} {shape}'.")
    slots: dict[str, list[str]]
    seeds: list[int] = Field(default=[0], min_length=1)
    num_images: int = Field(default=1, ge=1, le=10000)
    negative_prompt: str | None = None
    id_prefix: str = Field(default="p", pattern=r"^[A-Za-z0-9_-]+$")

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
    template: TemplateSpec | None = None
    storage_options: dict[str, Any] | None = Field(default=None, description="For path; default: output's.")

    @model_validator(mode="after")
    def _one_source(self) -> "ManifestSpec":
        if (self.path is None) == (self.template is None):
            raise ValueError("manifest needs exactly one of 'path' or 'template'")
        return self


class GeneratorSpec(Strict):
    backend: Literal["diffusion"] = "diffusion"
    model: str = Field(description="Hub id or local path/URL for from_pretrained.")
    revision: str | None = None
    steps: int = Field(default=20, ge=1, le=1000)
    guidance_scale: float = Field(default=5.0, ge=0.0)
    height: int = Field(default=64, ge=8, le=4096)
    width: int = Field(default=64, ge=8, le=4096)
    scheduler: str | None = Field(default=None, description="diffusers scheduler class name to swap in.")
    batch_size: int = Field(default=8, ge=1)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


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


class ResourcesSpec(Strict):
    generate: PoolSpec = PoolSpec(size=2)
    embed: PoolSpec = PoolSpec(size=1, num_cpus=0.25)
    ray_num_cpus: int | None = Field(default=None, description="CPUs for a local cluster (default: all).")


class OutputSpec(Strict):
    url: str = Field(description="Dataset root: local path or fsspec URL (s3://bucket/prefix).")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    formats: list[Literal["webdataset", "parquet"]] = ["webdataset", "parquet"]
    shard_max_samples: int = Field(default=1000, ge=1)
    shard_max_bytes: int = Field(default=256 * 2**20, ge=1024)
    keep_staging: bool = False
    retries: int = Field(default=6, ge=1, description="Attempts per storage operation (backoff with jitter).")
    retry_base_delay_s: float = Field(default=0.2, ge=0.0)
    lease_stale_after_s: float = Field(default=60.0, gt=0, description="A lease without heartbeat this long is taken over.")

    def store(self) -> "Store":
        from .storage import Store

        return Store(self.url, self.storage_options, retries=self.retries, retry_base_delay=self.retry_base_delay_s)


class ScreenSpec(Strict):
    """Prompt screen (DESIGN step 3): rules applied to prompt text before any GPU time."""


class CurationSpec(Strict):
    """Curation (DESIGN step 7): dedup, safety, thresholds, rebalancing. Changing it reuses staged units."""


class JobSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    manifest: ManifestSpec
    generator: GeneratorSpec
    clip: ClipSpec
    unit_size: int = Field(default=256, ge=1, description="Samples per work unit (the unit of resumption).")
    resources: ResourcesSpec = ResourcesSpec()
    screen: ScreenSpec = ScreenSpec()
    curation: CurationSpec = CurationSpec()
    output: OutputSpec

    def with_overrides(self, *, out: str | None = None, manifest: str | None = None) -> "JobSpec":
        """CLI overrides, re-validated through the same models."""
        data = self.model_dump()
        if out:
            data["output"]["url"] = out
        if manifest:
            data["manifest"] = {"path": manifest}
        return JobSpec.model_validate(data)


def _resolve_relative(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """Model and manifest paths that start with '.' or exist beside the spec are relative to the
    spec file, so jobs run from any cwd; hub ids and URLs pass through untouched."""

    def fix(v: str | None) -> str | None:
        if not v or "://" in v or Path(v).is_absolute():
            return v
        cand = base / v
        return str(cand) if cand.exists() or v.startswith(".") else v

    m = spec.get("manifest") or {}
    if isinstance(m, dict) and isinstance(m.get("path"), str):
        m["path"] = fix(m["path"])
    for section, keys in (("generator", ["model"]), ("clip", ["pretrained", "model_config_file", "tokenizer"])):
        sec = spec.get(section)
        if isinstance(sec, dict):
            for k in keys:
                if isinstance(sec.get(k), str):
                    sec[k] = fix(sec[k])
    return spec


def load_job(path: str | Path) -> JobSpec:
    """Read a YAML job spec (safe_load) into a validated ``JobSpec``; errors name the file and field."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"{p}: job spec not found") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p}: a job spec must be a mapping at the top level")
    raw = _resolve_relative(raw, p.resolve().parent)
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{p}: field '{loc}': {msg}")
        raise SpecError("\n".join(lines)) from None
