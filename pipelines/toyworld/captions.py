"""Captions for toy-world images, and the parser that reads attributes back out of them.

A caption mentions a *subset* of an image's attributes (the `spec`), in one of several
phrasings. Leaving attributes unspecified is what makes priors measurable: a prompt without a
colour shows which colour a model falls back to. The vocabulary is deliberately small so a
reduced BPE tokenizer covers it; `parse_caption(compose(spec)) == spec` is the grammar contract.
"""

from __future__ import annotations

import re

import numpy as np

from pipelines.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    POSITION_ORDER,
    POSITIONS,
    SHAPES,
    Attributes,
)

OBJECT_KEYS = ("shape", "colour", "size", "position")
# Probability that an attribute is left out of a training caption.
P_OMIT = {"shape": 0.1, "colour": 0.25, "size": 0.4, "position": 0.3, "background": 0.5,
          "nodule": 0.15, "nodule_side": 0.25, "nodule_size": 0.3}

SIZE_WORDS = {"small": ("small", "tiny"), "large": ("large", "big")}
POSITION_PHRASES = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "centre": ("in the centre", "in the middle"),
}
POSITION_SHORT = {"left": "left side", "right": "right side", "top": "top", "bottom": "bottom",
                  "centre": "centre"}
BACKGROUND_PHRASES = ("on a {} background", "against a {} background")
PHANTOM_NOUNS = ("chest radiograph", "chest x-ray", "frontal chest radiograph")
ABSENT_TEMPLATES = ("normal {noun}", "{noun} with no nodule", "{noun}, no nodule")
PRESENT_TEMPLATES = ("{noun} with a {size}nodule{side}", "{noun}, {size}nodule{side}",
                     "{noun} showing a {size}nodule{side}")


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def object_keys(index: int) -> dict[str, str]:
    """Map generic object keys to the flat keys of the index-th object (0 -> 'shape', 1 -> 'shape_2')."""
    suffix = "" if index == 0 else f"_{index + 1}"
    return {k: f"{k}{suffix}" for k in OBJECT_KEYS}


def choose_spec(attrs: Attributes, rng: np.random.Generator) -> dict[str, str]:
    """Pick which attributes a training caption mentions (the rest stay unspecified)."""
    flat = attrs.flat()
    if attrs.domain == "phantom":
        if rng.random() < P_OMIT["nodule"]:
            return {"domain": "phantom"}
        spec = {"domain": "phantom", "nodule": flat["nodule"]}
        if flat["nodule"] == "present":
            for key in ("nodule_side", "nodule_size"):
                if rng.random() >= P_OMIT[key]:
                    spec[key] = flat[key]
        return spec
    spec = {"domain": "shapes", "count": flat["count"]}
    if rng.random() >= P_OMIT["background"]:
        spec["background"] = flat["background"]
    for i in range(len(attrs.shapes)):
        for generic, key in object_keys(i).items():
            if rng.random() >= P_OMIT[generic]:
                spec[key] = flat[key]
    return spec


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: dict[str, str], rng: np.random.Generator) -> str:
    words = []
    if "size" in obj:
        words.append(_pick(rng, SIZE_WORDS[obj["size"]]))
    if "colour" in obj:
        words.append(obj["colour"])
    words.append(obj.get("shape", "shape"))
    return " ".join([_article(words[0]), *words])


def _objects(spec: dict[str, str]) -> list[dict[str, str]]:
    count = int(spec.get("count", "1"))
    return [{g: spec[k] for g, k in object_keys(i).items() if k in spec} for i in range(count)]


def _compose_shapes(spec: dict[str, str], rng: np.random.Generator) -> str:
    objects = _objects(spec)
    if len(objects) > 1 and all("position" in o for o in objects) and rng.random() < 0.5:
        objects = objects[::-1]  # mention order is free when positions disambiguate
    style = int(rng.integers(4))
    parts = []
    for obj in objects:
        np_ = _noun_phrase(obj, rng)
        if "position" not in obj:
            parts.append(np_)
        elif style == 1:
            parts.append(f"{np_}, {POSITION_SHORT[obj['position']]}")
        else:
            parts.append(f"{np_} {_pick(rng, POSITION_PHRASES[obj['position']])}")
    body = " and ".join(parts)
    if style == 2:
        body = f"a picture of {body}"
    if "background" not in spec:
        return body
    bg = spec["background"]
    if style == 3:
        return f"a {bg} background with {body}"
    sep = ", " if style == 1 else " "
    return f"{body}{sep}{_pick(rng, BACKGROUND_PHRASES).format(bg)}"


def _compose_phantom(spec: dict[str, str], rng: np.random.Generator) -> str:
    noun = _pick(rng, PHANTOM_NOUNS)
    if "nodule" not in spec:
        return noun
    if spec["nodule"] == "absent":
        return _pick(rng, ABSENT_TEMPLATES).format(noun=noun)
    size = f"{_pick(rng, SIZE_WORDS[spec['nodule_size']])} " if "nodule_size" in spec else ""
    side = f" in the {spec['nodule_side']} lung" if "nodule_side" in spec else ""
    return _pick(rng, PRESENT_TEMPLATES).format(noun=noun, size=size, side=side)


def compose(spec: dict[str, str], rng: np.random.Generator) -> str:
    """Phrase a (partial) attribute spec as a caption, choosing one of several phrasings."""
    if spec["domain"] == "phantom":
        return _compose_phantom(spec, rng)
    return _compose_shapes(spec, rng)


def caption(attrs: Attributes, rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """A training caption for an image and the attributes it specifies."""
    spec = choose_spec(attrs, rng)
    return compose(spec, rng), spec


_WORD = re.compile(r"[a-z]+")
_SIZE_LOOKUP = {w: size for size, words in SIZE_WORDS.items() for w in words}
_POSITION_LOOKUP = {p: p for p in POSITIONS} | {"middle": "centre", "center": "centre"}


def _parse_object(text: str) -> dict[str, str] | None:
    """Attributes of one object phrase; None when the phrase names no object."""
    words = _WORD.findall(text)
    if "shape" not in words and not set(words) & set(SHAPES):
        return None
    obj: dict[str, str] = {}
    for word in words:
        if word in SHAPES:
            obj["shape"] = word
        elif word in COLOURS:
            obj["colour"] = word
        elif word in _SIZE_LOOKUP:
            obj["size"] = _SIZE_LOOKUP[word]
        elif word in _POSITION_LOOKUP:
            obj["position"] = _POSITION_LOOKUP[word]
    return obj


def _parse_phantom(text: str) -> dict[str, str]:
    spec = {"domain": "phantom"}
    words = set(_WORD.findall(text))
    if "normal" in words or "no nodule" in text:
        spec["nodule"] = "absent"
    elif "nodule" in words:
        spec["nodule"] = "present"
        side = re.search(r"\b(left|right) lung", text)
        if side:
            spec["nodule_side"] = side.group(1)
        size = [_SIZE_LOOKUP[w] for w in _WORD.findall(text) if w in _SIZE_LOOKUP]
        if size:
            spec["nodule_size"] = size[0]
    return spec


def parse_caption(text: str) -> dict[str, str]:
    """Attributes a toy-world caption specifies; {} when the text is not a toy-world caption."""
    text = text.lower()
    if "radiograph" in text or "x-ray" in text or "chest" in text:
        return _parse_phantom(text)
    spec: dict[str, str] = {}
    bg = re.search(r"\b(\w+) background\b", text)
    if bg and bg.group(1) in BACKGROUNDS:
        spec["background"] = bg.group(1)
        text = text[: bg.start()] + text[bg.end():]
    objects = [o for o in (_parse_object(chunk) for chunk in text.split(" and ")) if o is not None]
    if not objects:
        return {}
    if all("position" in o for o in objects):
        objects.sort(key=lambda o: POSITION_ORDER.index(o["position"]))
    spec |= {"domain": "shapes", "count": str(len(objects))}
    for i, obj in enumerate(objects):
        spec |= {object_keys(i)[k]: v for k, v in obj.items()}
    return dict(sorted(spec.items()))

