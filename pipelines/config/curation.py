"""Curation and quota specs (DESIGN steps 7-8): dedup, prior datasets, references, safety, bias, QC, targets.
Changing them reuses the staged units (they are not in the units' fingerprint)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import Strict


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


