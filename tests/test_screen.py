"""Prompt screen: Unicode tricks do not get around a blocked term; rows are recorded with reasons."""

from __future__ import annotations

import pytest

from pipelines.plan import screen
from pipelines.config import ScreenSpec
from pipelines.plan.samples import Sample

SPEC = ScreenSpec(terms=["forbidden fruit", "zorp"], regexes=[r"\bbad(ly)?\s+idea\b"])
TRICKS = [
    "a forbidden fruit",
    "A FORBIDDEN FRUIT",  # case
    "a FoRbIdDeN fRuIt",  # mixed case
    "a ｆｏｒｂｉｄｄｅｎ ｆｒｕｉｔ",  # full-width letters
    "a for\u200dbid\u200bden fr\u200cuit",  # zero-width joiner, space, non-joiner
    "a forbidden\u00a0\u2003fruit",  # no-break and em spaces
    "a forbi\u0301dden fruit",  # combining accent
    "a fоrbidden fruit",  # Cyrillic o
    "a forbidden\u00adfruit",  # soft hyphen instead of the space
    "a z.o.r.p",  # spelled out
    "a z o r p",
    "a \u2060zorp\ufeff",  # word joiner, BOM
    "a ZÖRP",
    "a badly   idea",  # regex on normalised text
]
CLEAN = ["a red circle", "a zorpy thing", "forbidden", "fruit salad", "a good idea", "a bad ideas list"]


@pytest.mark.parametrize("prompt", TRICKS)
def test_unicode_tricks_are_screened(prompt):
    rules = screen.load_rules(SPEC)
    assert screen.match(prompt, rules), (prompt, screen.normalise(prompt))


@pytest.mark.parametrize("prompt", CLEAN)
def test_clean_prompts_pass(prompt):
    assert screen.match(prompt, screen.load_rules(SPEC)) == []


def _sample(i: int, prompt: str, negative: str | None = None) -> Sample:
    return Sample(f"p{i}_00000", f"p{i}", 0, prompt, negative, i, 4, 3.0, 32, 32, {})


def test_screen_records_every_reason_and_keeps_order():
    samples = [_sample(0, "a red circle"), _sample(1, "forbidden fruit, badly idea"), _sample(2, "a blue square"),
               _sample(3, "a square", negative="zorp")]
    keep, rows = screen.screen(samples, SPEC)
    assert [s.sample_id for s in keep] == ["p0_00000", "p2_00000", "p3_00000"]  # negative prompt not screened
    assert rows == [{"sample_id": "p1_00000", "prompt_id": "p1",
                     "reasons": ["prompt_screen:term:forbidden fruit", r"prompt_screen:regex:\bbad(ly)?\s+idea\b"]}]
    spec = SPEC.model_copy(update={"fields": ["prompt", "negative_prompt"]})
    _, rows = screen.screen(samples, spec)
    assert rows[-1]["reasons"] == ["prompt_screen:negative_prompt:term:zorp"]
    keep, rows = screen.screen(samples, SPEC.model_copy(update={"enabled": False}))
    assert len(keep) == 4 and rows == []


def test_default_rules_are_on_and_can_be_turned_off():
    s = [_sample(0, "CSAM"), _sample(1, "a naked child")]
    assert len(screen.screen(s, ScreenSpec())[1]) == 2
    assert screen.screen(s, ScreenSpec(default_rules=False))[1] == []


def test_rule_files_and_fingerprint_follow_their_content(tmp_path):
    f = tmp_path / "rules.txt"
    f.write_text("# comment\nquux\nre:\\bfoo+bar\\b\n")
    spec = ScreenSpec(rule_files=[str(f)])
    names = [r.name for r in screen.load_rules(spec)]
    assert "term:quux" in names and r"regex:\bfoo+bar\b" in names
    assert screen.match("a QUUX", screen.load_rules(spec)) == ["term:quux"]
    before = screen.fingerprint(spec)
    f.write_text("quux\nblorb\n")
    assert screen.fingerprint(spec) != before  # editing a rule file changes what is generated


def test_bad_regex_is_a_spec_error(tmp_path):
    from pydantic import ValidationError

    from pipelines.errors import SpecError

    with pytest.raises(ValidationError):
        ScreenSpec(regexes=["(unclosed"])
    f = tmp_path / "r.txt"
    f.write_text("re:(unclosed\n")
    with pytest.raises(SpecError, match="line 1"):
        screen.load_rules(ScreenSpec(rule_files=[str(f)]))
