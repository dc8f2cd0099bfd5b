"""Load the versioned data contracts in ``schemas/`` (shipped as ``pipelines.schemas``)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

MANIFEST = "manifest.v1.schema.json"
SAMPLE_RECORD = "sample_record.v1.schema.json"


@lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    return json.loads(resources.files("pipelines.schemas").joinpath(name).read_text())


@lru_cache(maxsize=None)
def validator(name: str) -> jsonschema.protocols.Validator:
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)
