"""open_clip image and text embeddings and CLIPScore.

CLIPScore here is ``100 * max(cos(image, text), 0)`` (Hessel et al. 2021 with w=100, as in
torchmetrics), computed from L2-normalised embeddings.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from pipelines.config import ClipSpec
from pipelines.publish.provenance import WEIGHT_SUFFIXES, weights_sha256

if TYPE_CHECKING:  # the embedder itself imports without pyarrow (GPU benchmark hosts)
    import pyarrow as pa


def clip_score(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Row-wise CLIPScore of normalised embeddings (N, D) x (N, D) -> (N,)."""
    cos = np.sum(image_emb.astype(np.float64) * text_emb.astype(np.float64), axis=1)
    return (100.0 * np.maximum(cos, 0.0)).astype(np.float32)


def _path_like(value: str) -> bool:
    return Path(value).is_absolute() or value.startswith((".", "~")) or value.endswith(WEIGHT_SUFFIXES + (".json",))


def model_problems(spec: ClipSpec, shown: Callable[[str], str] = lambda k: "") -> list[str]:
    """Why this CLIP cannot be created here (each naming its ``clip.*`` key), or []: checked before Ray
    starts. ``shown(key)``: the value as the spec wrote it. Nothing is downloaded or loaded."""
    import open_clip

    from pipelines.publish.provenance import hub_problem

    def say(key: str) -> str:
        return repr(shown(f"clip.{key}") or getattr(spec, key))

    problems: list[str] = []
    names = set(open_clip.list_models())
    if spec.model_config_file:
        cfg = Path(spec.model_config_file)
        if not cfg.exists():
            problems.append(f"field 'clip.model_config_file': {say('model_config_file')} not found")
        names |= {cfg.stem} if cfg.is_file() else {f.stem for f in cfg.glob("*.json")}
    if spec.model.startswith("hf-hub:"):
        why = hub_problem("clip.model", spec.model.removeprefix("hf-hub:"), ("open_clip_config.json",))
        problems += [why] if why else []
    elif spec.model not in names:
        near = difflib.get_close_matches(spec.model, sorted(names), n=3)
        problems.append(f"field 'clip.model': {spec.model!r} is not an open_clip model (built-in, or registered "
                        f"by clip.model_config_file)" + (f"; close: {', '.join(near)}" if near else ""))
    p = spec.pretrained
    if p and (Path(p).exists() or _path_like(p) or "/" in p):
        if not Path(p).is_file():
            problems.append(f"field 'clip.pretrained': {say('pretrained')} not found (a weights file)")
    elif p and spec.model in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(spec.model)
        if p not in tags:
            problems.append(f"field 'clip.pretrained': {p!r} is not a pretrained tag of {spec.model} "
                            f"({', '.join(tags) or 'none'}) nor a weights file")
        else:
            problems += _cached_tag_problem(spec.model, p)
    elif p:
        problems.append(f"field 'clip.pretrained': {p!r} is not a weights file, and {spec.model} has no "
                        "pretrained tags")
    t = spec.tokenizer
    if t and not Path(t).is_dir():
        why = (f"field 'clip.tokenizer': {say('tokenizer')} not found (a tokenizer folder)" if _path_like(t)
               else hub_problem("clip.tokenizer", t, ("tokenizer.json", "tokenizer_config.json")))
        problems += [why] if why else []
    return problems


def _cached_tag_problem(model: str, tag: str) -> list[str]:
    """Offline, an open_clip pretrained tag loads only if its weights are already cached."""
    import open_clip

    from pipelines.publish.provenance import hub_cached, hub_offline

    if not hub_offline():
        return []
    hub = (open_clip.get_pretrained_cfg(model, tag) or {}).get("hf_hub", "")
    if hub.endswith("/"):  # a repo: open_clip's default file names
        repo_id, files = hub.rstrip("/"), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    else:
        repo_id, _, name = hub.rpartition("/")
        files = (name,)
    if hub and hub_cached(repo_id, files):
        return []
    return [f"field 'clip.pretrained': {tag!r} weights of {model} are not in the local cache (offline: "
            "HF_HUB_OFFLINE is set)"]


# The CLIP specs of jobs run in this process, as written -> as resolved: published provenance names CLIP
# files as the job spec wrote them, and the report built during publish loads the CLIP from there.
_RESOLVED: dict[ClipSpec, ClipSpec] = {}


def remember_resolved(written: ClipSpec, resolved: ClipSpec) -> None:
    _RESOLVED[written] = resolved


class ClipEmbedder:
    def __init__(self, spec: ClipSpec, batch_size: int | None = None):
        import open_clip

        spec = _RESOLVED.get(spec, spec)

        if spec.model_config_file:
            open_clip.add_model_config(spec.model_config_file)
        precision = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[spec.dtype]
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            spec.model, pretrained=spec.pretrained, device=spec.device, precision=precision
        )
        self.model.eval()
        if spec.tokenizer:
            from open_clip.tokenizer import HFTokenizer

            self.tokenizer = HFTokenizer(spec.tokenizer, context_length=self.model.context_length)
        else:
            self.tokenizer = open_clip.get_tokenizer(spec.model)
        self.device = torch.device(spec.device)
        self.dtype = getattr(torch, spec.dtype)
        self.batch_size = batch_size or spec.batch_size
        self.info = {"model": spec.model, "weights_sha256": weights_sha256(spec.pretrained)}

    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, i + self.batch_size) for i in range(0, n, self.batch_size)]

    @torch.inference_mode()
    def image_embeddings(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for sl in self._chunks(len(images)):
            x = torch.stack([self.preprocess(im.convert("RGB")) for im in images[sl]]).to(self.device, self.dtype)
            out.append(torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for sl in self._chunks(len(texts)):
            tokens = self.tokenizer(list(texts[sl])).to(self.device)
            out.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def unit_images(table: pa.Table) -> dict[int, Image.Image]:
    """Row -> image of a unit's generated samples (failed ones have none): from its raw pixels when
    it carries them (straight from the generator: no PNG decode), else from its PNGs."""
    import io

    if "pixels" in table.column_names:
        from pipelines.contracts.unit import pixels_from_bytes

        bufs, shapes = table.column("pixels").to_pylist(), table.column("pixels_shape").to_pylist()
        return {i: Image.fromarray(pixels_from_bytes(b, s)) for i, (b, s) in enumerate(zip(bufs, shapes))
                if b is not None}
    return {i: Image.open(io.BytesIO(b)) for i, b in enumerate(table.column("png").to_pylist()) if b is not None}


def embed_unit(embedder: ClipEmbedder, table: pa.Table) -> pa.Table:
    """Add CLIP embeddings and scores to a generated unit (one pass over its images)."""
    import time

    import pyarrow as pa

    from pipelines.contracts.unit import EMBED_FIELDS, with_meta

    t0 = time.perf_counter()
    images = unit_images(table)
    ok = sorted(images)
    prompts = table.column("prompt").to_pylist()
    img = embedder.image_embeddings([images[i] for i in ok])
    txt = embedder.text_embeddings([prompts[i] for i in ok])
    score = clip_score(img, txt) if ok else np.zeros(0, np.float32)
    ms = (time.perf_counter() - t0) * 1000 / max(len(ok), 1)
    n = table.num_rows
    full_score: list[float | None] = [None] * n
    full_img: list[list[float] | None] = [None] * n
    full_txt: list[list[float] | None] = [None] * n
    for j, i in enumerate(ok):
        full_score[i], full_img[i], full_txt[i] = float(score[j]), img[j], txt[j]
    cols = {
        "clip_score": pa.array(full_score, pa.float32()),
        "image_emb": pa.array(full_img, pa.list_(pa.float32())),
        "text_emb": pa.array(full_txt, pa.list_(pa.float32())),
        "clip_ms": pa.array([ms] * n, pa.float64()),
    }
    for name, typ in EMBED_FIELDS:
        table = table.append_column(pa.field(name, typ), cols[name])
    return with_meta(table, "synthgen.clip", embedder.info)
