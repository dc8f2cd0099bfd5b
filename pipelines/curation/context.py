"""What every curation partition shares: external sets and text embeddings, computed once with CLIP.

``build_context`` is the only curation step that holds a CLIP model: it runs where the execution
layer puts it (a Ray task on the cluster, with the embed actors' thread count), embeds the reference
*images* and the safety / audit prompts there, and returns plain arrays. Partitions then score their
samples against it with no model: the text embeddings are replayed from a recording of exactly the
calls ``safety.concept_scores`` and ``bias.vocabulary`` make, so the scores equal a direct run's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.curation import bias
from pipelines.curation import references as refsets
from pipelines.curation import safety

if TYPE_CHECKING:
    from pipelines.config import ClipSpec, CurationSpec


class RecordedText:
    """Text embedder that records calls (with a model) or replays them (without one)."""

    def __init__(self, embed: Any = None):
        self.embed = embed
        self.calls: dict[tuple[str, ...], np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        key = tuple(texts)
        if key not in self.calls:
            if self.embed is None:
                raise KeyError(f"text embeddings of {key!r} were not recorded")
            self.calls[key] = self.embed(list(texts))
        return self.calls[key]

    def replay(self) -> "RecordedText":
        out = RecordedText()
        out.calls = dict(self.calls)
        return out


@dataclass
class Context:
    priors: list[refsets.ExternalSet] = field(default_factory=list)
    references: list[refsets.ExternalSet] = field(default_factory=list)
    text: RecordedText = field(default_factory=RecordedText)
    vocab: dict[str, tuple[list[str], np.ndarray]] | None = None
    logit_scale: float = 100.0


def build_context(cur: "CurationSpec", clip: "ClipSpec", any_samples: bool, torch_threads: int | None = None
                  ) -> Context:
    """Load earlier datasets and reference sets, embed reference images and prompts (as ``single.decide``)."""
    need_text = any_samples and (cur.safety.mode != "off" or bool(cur.bias.attributes))
    need_images = any_samples and any(not r.url.endswith((".npy", ".parquet")) for r in cur.references)
    embedder, ctx = None, Context()
    with _torch_threads(torch_threads if need_text or need_images else None):
        if need_text or need_images:
            from pipelines.embed.clip import ClipEmbedder

            embedder = ClipEmbedder(clip)
            ctx.logit_scale = min(float(embedder.model.logit_scale.detach().exp()), 100.0)
            ctx.text = RecordedText(embedder.text_embeddings)
        ctx.priors = [refsets.load_dataset(p.url, p.storage_options) for p in cur.prior_datasets]
        ctx.references = [refsets.load_reference(r.name, r.url, r.storage_options, embedder) for r in cur.references]
        if need_text:
            dim = embedder.text_embeddings(["a"]).shape[1]
            if cur.safety.mode != "off":
                safety.concept_scores(np.zeros((1, dim), np.float32), cur.safety, ctx.text, ctx.logit_scale)
            if cur.bias.attributes:
                ctx.vocab = bias.vocabulary(ctx.text, cur.bias.attributes)
    ctx.text = ctx.text.replay()
    return ctx


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """The embed actors' thread count while CLIP runs here (its rounding depends on it), then the caller's."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
