"""The toy world as a synthgen judge plug-in (entry point group ``synthgen.judges``).

The audit report finds judges through Python entry points, so the core never imports the toy
world: a judge plug-in is a module with ``parse_caption(prompt) -> {attribute: value}`` (empty when
the prompt is not in its language), ``judge(image) -> {attribute: value}``,
``agreement(prompt_attrs, judged) -> {attribute: bool}`` and ``zero_shot_vocab() ->
{attribute: {label: [prompts]}}``.
"""

from __future__ import annotations

from pipelines.toyworld.captions import parse_caption
from pipelines.toyworld.judge import agreement, judge
from pipelines.toyworld.world import COLOURS, SHAPES

__all__ = ["agreement", "judge", "parse_caption", "zero_shot_vocab"]


def zero_shot_vocab() -> dict[str, dict[str, list[str]]]:
    """attribute -> label -> prompts: the class prompts the toy CLIP was evaluated with when present."""
    vocab: dict[str, dict[str, list[str]]] = {
        "colour": {c: [f"a {c} shape"] + [f"a {c} {s}" for s in SHAPES] for c in COLOURS},
        "shape": {s: [f"a {s}"] + [f"a {c} {s}" for c in COLOURS] for s in SHAPES}}
    try:
        from pipelines.toyworld.clip_eval import ZERO_SHOT
    except ImportError:
        return vocab
    out = {}
    for attr, v in ZERO_SHOT.items():
        if isinstance(v, dict) and all(isinstance(p, (list, tuple)) for p in v.values()):
            out[attr] = {str(k): [str(x) for x in p] for k, p in v.items()}
        elif isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], dict):  # (names, templates)
            out[attr] = {k: [t.format(n) for t in v[1]] for k, n in v[0].items()}
    return out or vocab
