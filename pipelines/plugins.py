"""Plug-ins named in job specs and model configs as ``package.module:attribute``, imported by name at
run time: how the core uses the toy world (or any other installed package) without importing it.
Only installed modules are imported, never code from a model folder. Manifests (data, not config)
name no code: their ``mask_region`` picks among the region plug-ins installed as entry points."""

from __future__ import annotations

import importlib
from functools import lru_cache
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


#: Entry point group of region plug-ins: ``name = "package.module:callable"``, the callable taking
#: ``(region, height, width)`` and returning a boolean HxW mask, ValueError for a region it lacks.
REGION_GROUP = "synthgen.regions"


@lru_cache(maxsize=1)
def region_plugins() -> dict[str, Any]:
    """Installed region plug-ins by name (entry points, loaded on first use): a manifest's
    ``mask_region`` picks a region by name among them, never code by its import path."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in sorted(entry_points(group=REGION_GROUP), key=lambda e: e.name)}


@lru_cache(maxsize=256)
def find_region(name: str) -> tuple[str, Any, str]:
    """(plug-in name, its callable, region) for ``region`` or ``plugin/region``; ValueError when no
    installed plug-in, or more than one, knows the region."""
    plugin, _, region = name.rpartition("/")
    installed = region_plugins()
    if not installed:
        raise ValueError(f"no region plug-in is installed (entry point group {REGION_GROUP})")
    if plugin and plugin not in installed:
        raise ValueError(f"no region plug-in '{plugin}' (installed: {', '.join(installed) or 'none'})")
    known, why = [], []
    for pname in [plugin] if plugin else list(installed):
        fn = _load_region(pname)
        try:
            fn(region, 64, 64)
        except ValueError as e:
            why.append(f"{pname}: {e}")
            continue
        known.append((pname, fn))
    if not known:
        raise ValueError(f"no installed region plug-in knows '{name}' (" + "; ".join(why) + ")")
    if len(known) > 1:
        raise ValueError(f"region '{name}' is known to several region plug-ins: write "
                         + " or ".join(f"'{p}/{region}'" for p, _ in known))
    return known[0][0], known[0][1], region


def _load_region(plugin: str) -> Any:
    try:
        fn = region_plugins()[plugin].load()
    except (ImportError, AttributeError) as e:
        raise ValueError(f"region plug-in '{plugin}': cannot import it ({e})") from None
    if not callable(fn):
        raise ValueError(f"region plug-in '{plugin}' is not a callable")
    return fn
