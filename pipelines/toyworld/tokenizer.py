"""A reduced CLIP BPE tokenizer for the toy world, derived offline from open_clip's bundled vocab.

The full 49,408-token table would dominate the size of the tiny text encoders, so only the BPE
merges that the world's words actually use are kept (in their original rank order). For those
words tokenization is identical to full CLIP BPE (a merge that never fires cannot change the
result); any other text still tokenizes, falling back to shorter pieces and single bytes.
The same tokenizer serves the diffusion text encoder and the toy open_clip model.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import numpy as np
import regex

from pipelines.toyworld.captions import caption
from pipelines.toyworld.world import sample_attributes

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 32
# CLIP's pre-tokenizer pattern (open_clip.tokenizer.SimpleTokenizer).
_PAT = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
                     r"""[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
# Words beyond the captions that prompts commonly use; cheap to cover.
EXTRA_WORDS = ("photo", "image", "picture", "of", "the", "a", "an", "with", "and", "no",
               "colour", "color", "center", "grey", "one", "two")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-unicode map (as in open_clip / GPT-2)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def full_merges() -> list[tuple[str, str]]:
    """All merges of open_clip's bundled `bpe_simple_vocab_16e6.txt.gz`, in rank order."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path) as f:
        lines = f.read().decode("utf-8").split("\n")
    lines = lines[1: 49152 - 256 - 2 + 1]  # the slice open_clip's SimpleTokenizer uses
    return [tuple(line.split()) for line in lines]  # type: ignore[misc]


def _bpe_merges_used(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """Run CLIP BPE on one pre-token and return the merges that fired."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    used = []
    while len(parts) > 1:
        pairs = set(pairwise(parts))
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        used.append(best)
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return used


def world_words(n_captions: int = 20000, seed: int = 0) -> set[str]:
    """Every pre-token that the world's captions (and a few common prompt words) contain."""
    rng = np.random.default_rng(seed)
    words = set(EXTRA_WORDS)
    for _ in range(n_captions):
        words.update(_PAT.findall(caption(sample_attributes(rng), rng)[0].lower()))
    return words


def reduced_vocab(words: set[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges covering `words`: 512 byte tokens, the merges used, two specials."""
    merges = full_merges()
    ranks = {m: i for i, m in enumerate(merges)}
    byte_map = bytes_to_unicode()
    used: set[tuple[str, str]] = set()
    for word in words:
        encoded = "".join(byte_map[b] for b in word.encode("utf-8"))
        used.update(_bpe_merges_used(encoded, ranks))
    kept = [m for m in merges if m in used]
    tokens = list(byte_map.values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in kept] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, kept


def build_tokenizer(context_length: int = CONTEXT_LENGTH):
    """A transformers `CLIPTokenizer` over the reduced vocabulary."""
    from transformers import CLIPTokenizer

    vocab, merges = reduced_vocab(world_words())
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)


def save_tokenizer(directory: str | Path, context_length: int = CONTEXT_LENGTH) -> int:
    """Write the tokenizer to `directory` (tokenizer.json + config); returns the vocab size."""
    tok = build_tokenizer(context_length)
    tok.save_pretrained(str(directory))
    return len(tok)
