"""Reading a job spec file: YAML (safe_load), paths relative to the spec file, errors naming file and field."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipelines.config import JobSpec
from pipelines.errors import SpecError


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
