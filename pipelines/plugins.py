"""Plug-ins named in job specs and model configs as ``package.module:attribute``, imported by name at
run time: how the core uses the toy world (or any other installed package) without importing it.
Only installed modules are imported, never code from a model folder."""

from __future__ import annotations

import importlib
from typing import Any


def load_ref(ref: str, what: str) -> Any:
    """The attribute ``ref`` names; ValueError naming ``what`` (e.g. "qc classifier") otherwise."""
    module, sep, name = ref.partition(":")
    if not (module and sep and name):
        raise ValueError(f"{what} '{ref}' must be 'package.module:name'")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} '{ref}': cannot import it ({e})") from None
    if not callable(obj):
        raise ValueError(f"{what} '{ref}': {name} is not a callable of {module}")
    return obj
