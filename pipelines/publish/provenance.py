"""What produced a dataset: code and library versions, model weight hashes, host, times.

Credentials never enter provenance: storage options are reduced to their non-secret keys.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx")
CONFIG_SUFFIXES = (".json", ".txt")
LIBRARIES = ("synthgen", "torch", "diffusers", "transformers", "open_clip_torch", "ray", "pyarrow", "numpy",
             "pillow", "webdataset", "fsspec", "s3fs")
_SECRET_HINTS = ("key", "secret", "token", "password", "credential", "session")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _local_path(model: str, revision: str | None) -> Path:
    """A local path as is; a hub id resolved to its snapshot in the local HF cache (no download)."""
    p = Path(model)
    if p.exists() or "/" not in model or model.startswith((".", "/")):
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # not cached here (e.g. the driver of a cluster without the weights)
        return p


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def hub_cached(repo_id: str, filenames: tuple[str, ...], revision: str | None = None) -> bool:
    """Whether one of ``filenames`` of a hub repo is in the local HF cache (nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision), str) for f in filenames)


def hub_problem(key: str, value: str, filenames: tuple[str, ...], revision: str | None = None) -> str | None:
    """Why ``value`` (a hub id, as the spec wrote it) cannot load here, or None: offline, its files must be
    cached; online, the workers download it."""
    if not HUB_ID.match(value):
        return f"field '{key}': {value!r} is not a local path here and not a hub id"
    if hub_offline() and not hub_cached(value, filenames, revision):
        return (f"field '{key}': {value!r} is not a local path here, and as a hub id it is not in the local "
                f"Hugging Face cache (offline: HF_HUB_OFFLINE is set)")
    return None


@lru_cache(maxsize=None)
def weight_files(model: str, revision: str | None = None) -> tuple[tuple[str, str], ...]:
    """(relative path, sha256) of each weight file of a local model dir or file, or of a hub id's
    cached snapshot; () if neither is here."""
    p = _local_path(model, revision)
    if p.is_file():
        return ((p.name, file_sha256(p)),)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
        return tuple((str(f.relative_to(p)), file_sha256(f)) for f in files)
    return ()


def _digest(files: tuple[tuple[str, str], ...]) -> str | None:
    """One sha256 over (relative path, file sha256) pairs; None for none."""
    if not files:
        return None
    h = hashlib.sha256()
    for name, digest in files:
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def model_configs_sha256(model: str | None, revision: str | None = None) -> str | None:
    """One digest over a model folder's config files (scheduler, model index, tokenizer: .json and
    .txt), or of one config file; None when not here. They change the images without touching a
    weight file (a sampler setting), so the staging key must see them. Not cached, unlike
    `weight_files`: a config is edited in place more often than a weight file."""
    p = _local_path(model, revision) if model else None
    if p is not None and p.is_file() and p.suffix in CONFIG_SUFFIXES:
        return file_sha256(p)
    if p is None or not p.is_dir():
        return None
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in CONFIG_SUFFIXES)
    return _digest(tuple((str(f.relative_to(p)), file_sha256(f)) for f in files))


def weights_sha256(model: str | None, revision: str | None = None) -> str | None:
    """One digest over all weight files (names and contents); None when the weights are not here."""
    return _digest(weight_files(model, revision)) if model else None


def component_config_sha256(config: Any) -> str:
    """Digest of a component's class and config (a diffusers scheduler's, say), without diffusers'
    bookkeeping keys ("_diffusers_version", ...). The weights digest does not cover the sampler, yet
    DPM-Solver++ and its SDE variant share a class and draw different images; and a scheduler
    swapped in with `from_config` keeps its predecessor's config keys, so the class must count."""
    items = {k: v for k, v in dict(config).items() if not k.startswith("_") or k == "_class_name"}
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@lru_cache(maxsize=1)
def code_version() -> str:
    """git commit of the checkout (with '+dirty'), else the package version."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return importlib.metadata.version("synthgen")


def redact(options: dict[str, Any]) -> dict[str, Any]:
    """Storage options safe to record: secret-looking keys are dropped, nested dicts too."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if any(h in k.lower() for h in _SECRET_HINTS):
            continue
        out[k] = redact(v) if isinstance(v, dict) else v
    return out


def host() -> dict[str, Any]:
    return {"hostname": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count()}
