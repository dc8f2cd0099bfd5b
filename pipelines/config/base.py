"""The base of every spec model: strict (unknown keys are errors), frozen, finite numbers only."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # allow_inf_nan=False: YAML's .nan/.inf pass every ge/le bound silently and would run.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


