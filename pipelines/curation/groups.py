"""Prompt groups: the one key function that curation's bias audit (and quotas), the decisions table's
``group`` column and the audit report use, so their per-group numbers line up.

A group is named by the manifest ``attributes`` it is grouped on, as ``k=v`` pairs joined by ``,``:
the keys of ``group_by`` in that order (a missing attribute reads as ``k=``), or, with no
``group_by``, every attribute in sorted key order. No attribute at all gives :data:`NO_GROUP`.
Pure functions on plain mappings: no model, no I/O, nothing from the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

NO_GROUP = "(all)"

Attributes = Mapping[str, str] | Iterable[tuple[str, str]] | None


def group_key(attributes: Attributes, group_by: Sequence[str] | None = None) -> str:
    """The group of one sample or prompt: ``k=v,k2=v2`` over ``group_by`` (default: all its keys, sorted).

    ``attributes`` may be a mapping, the ``(key, value)`` pairs of an Arrow map, or None (no attributes)."""
    attrs = attributes if isinstance(attributes, Mapping) else dict(attributes or [])
    keys = sorted(attrs) if group_by is None else group_by
    return ",".join(f"{k}={attrs.get(k, '')}" for k in keys) or NO_GROUP


def group_keys(attribute_maps: Iterable[Attributes], group_by: Sequence[str] | None) -> list[str]:
    """:func:`group_key` of every sample, in order."""
    return [group_key(a, group_by) for a in attribute_maps]
