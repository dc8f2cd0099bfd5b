"""Prompt screen (DESIGN step 3): rules on the prompt text, before any GPU time is spent.

Screened samples are not generated; they are recorded in the decisions table with their reasons.

Text and rules are compared in one canonical form (``normalise``): Unicode NFKC (full-width and
compatibility forms fold to ASCII), invisible format characters removed (zero-width joiners and
spaces, soft hyphens, bidi controls), case folded, diacritics stripped, common Cyrillic/Greek
look-alikes mapped to Latin, whitespace collapsed. A term matches as a whole word or phrase, also
when spelled out with a separator between every letter ("z.o.r.p", "z o r p"); a regex matches
anywhere in the canonical text. Every matching rule adds a reason ``prompt_screen:<rule>``.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from pipelines.config import ScreenSpec
from pipelines.plan.samples import Sample

#: Bundled rules (on unless ``screen.default_rules: false``): content that is never generated.
DEFAULT_RULES = (
    "csam",
    "child sexual abuse",
    "child pornography",
    "child porn",
    "underage nude",
    "nude child",
    "nude minor",
    r"re:\b(child|children|minor|minors|underage|kid|kids|preteen)\b.{0,40}\b(nude|naked|sexual|sexy|explicit|porn)",
    r"re:\b(nude|naked|sexual|sexy|explicit|porn)\w*\b.{0,40}\b(child|children|minor|minors|underage|kid|kids|preteen)\b",
)

# Look-alike letters from other scripts that are used to dodge Latin blocklists (lower case: the
# map is applied after case folding).
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "һ": "h", "ԛ": "q",
    "ԝ": "w", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ω": "w",
})
_SEP = r"[\s.\-_*·+/|,]+"


def normalise(text: str) -> str:
    """The canonical form rules and prompts are compared in (see module docstring)."""
    t = unicodedata.normalize("NFKC", text)
    t = "".join(ch for ch in t if unicodedata.category(ch) not in ("Cf", "Mn", "Me") or ch == " ")
    t = t.casefold()
    t = "".join(ch for ch in unicodedata.normalize("NFKD", t) if not unicodedata.combining(ch))
    t = unicodedata.normalize("NFKC", t).translate(_CONFUSABLES)
    return re.sub(r"\s+", " ", t).strip()


@dataclass(frozen=True)
class Rule:
    name: str  # the reason suffix: "term:<term>" or "regex:<pattern>"
    pattern: re.Pattern[str]


def _term_rule(term: str) -> Rule | None:
    t = normalise(term)
    if not t:
        return None
    body = r"\s*".join(re.escape(w) for w in t.split(" "))
    letters = [re.escape(ch) for ch in t.replace(" ", "")]
    spelled = _SEP.join(letters)  # "n.u.d.e", "n u d e": a separator between every letter
    return Rule(f"term:{t}", re.compile(rf"(?<!\w)(?:{body}|{spelled})(?!\w)"))


def _rule_lines(lines: list[str] | tuple[str, ...], origin: str) -> list[Rule]:
    rules = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("re:"):
            try:
                rules.append(Rule(f"regex:{line[3:]}", re.compile(line[3:])))
            except re.error as e:
                from pipelines.errors import SpecError

                raise SpecError(f"{origin}: line {n}: regex does not compile: {e}") from None
        else:
            r = _term_rule(line)
            if r:
                rules.append(r)
    return rules


def _read_rule_file(path: str) -> list[str]:
    from pipelines.io.store import url_to_fs

    try:
        fs, p = url_to_fs(path)
        with fs.open(p, "rt", encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        from pipelines.errors import SpecError

        raise SpecError(f"{path}: screen rule file not found") from None


def load_rules(spec: ScreenSpec) -> list[Rule]:
    """Every rule of a screen spec, in a fixed order (bundled, files, terms, regexes), deduplicated."""
    rules: list[Rule] = []
    if spec.default_rules:
        rules += _rule_lines(DEFAULT_RULES, "pipelines.plan.screen.DEFAULT_RULES")
    for path in spec.rule_files:
        rules += _rule_lines(_read_rule_file(path), path)
    rules += [r for r in (_term_rule(t) for t in spec.terms) if r]
    rules += [Rule(f"regex:{p}", re.compile(p)) for p in spec.regexes]
    seen: set[str] = set()
    return [r for r in rules if not (r.name in seen or seen.add(r.name))]


def fingerprint(spec: ScreenSpec) -> dict[str, Any]:
    """What the screen contributes to the staging fingerprint: the settings and the rules' content
    (editing a rule file changes which samples are generated, so it must change the key)."""
    names = [r.name for r in load_rules(spec)] if spec.enabled else []
    return {"spec": spec.model_dump(), "rules_sha256": hashlib.sha256(json.dumps(names).encode()).hexdigest()}


def match(text: str | None, rules: list[Rule]) -> list[str]:
    """Names of the rules that match ``text`` (in rule order)."""
    if not text:
        return []
    t = normalise(text)
    return [r.name for r in rules if r.pattern.search(t)]


def screen(samples: list[Sample], spec: ScreenSpec) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Split samples into (to generate, screened rows ``{sample_id, prompt_id, reasons}``)."""
    if not spec.enabled:
        return list(samples), []
    rules = load_rules(spec)
    keep: list[Sample] = []
    screened: list[dict[str, Any]] = []
    cache: dict[tuple[str | None, ...], list[str]] = {}
    for s in samples:
        texts = tuple(getattr(s, f) for f in spec.fields)
        if texts not in cache:
            hits: list[str] = []
            for field, text in zip(spec.fields, texts):
                prefix = "" if field == "prompt" else f"{field}:"
                hits += [f"prompt_screen:{prefix}{name}" for name in match(text, rules)]
            cache[texts] = hits
        if cache[texts]:
            screened.append({"sample_id": s.sample_id, "prompt_id": s.prompt_id, "reasons": list(cache[texts])})
        else:
            keep.append(s)
    return keep, screened
