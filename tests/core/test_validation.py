"""wan22bot.validation: pydantic's errors read the same way for every caller."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wan22bot.validation import first_problem, problems, show


class Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frames: int | None = None
    seed: int | None = Field(None, ge=-1, le=100)
    smooth: bool | None = None
    preset: Literal["fast", "quality"] | None = None
    prompt: str | None = Field(None, max_length=5)


def _problem(**data):
    with pytest.raises(ValidationError) as info:
        Opts.model_validate(data)
    return first_problem(info.value)


@pytest.mark.parametrize("data, expect", [
    ({"frames": "many"}, "frames must be a whole number, got 'many'"),
    ({"smooth": "perhaps"}, "smooth must be true or false, got 'perhaps'"),
    ({"preset": "ultra"}, "preset must be one of fast, quality, got 'ultra'"),
    ({"seed": -5}, "seed must be at least -1, got -5"),
    ({"seed": 101}, "seed must be at most 100, got 101"),
    ({"prompt": "far too long"}, "prompt is too long: at most 5 characters"),
])
def test_explain_names_the_key_the_rule_and_the_value(data, expect):
    assert _problem(**data).explain() == expect


def test_explain_with_the_caller_s_name_and_shown_value():
    p = _problem(frames="x")
    assert p.key == "frames" and p.kind == "int_parsing" and p.given == "x"
    assert p.explain("--frames", shown="") == "--frames must be a whole number"


def test_unknown_keys_and_every_problem_in_order():
    with pytest.raises(ValidationError) as info:
        Opts.model_validate({"fps": 30, "seed": 500})
    found = problems(info.value)
    assert [(p.key, p.unknown_key) for p in found] == [("seed", False), ("fps", True)]
    assert not found[0].message.startswith("Value error")


def test_show_shortens_and_names_tables():
    assert show({"a": 1}) == "(table)"
    assert show("x" * 100, limit=10) == "'xxxxxx..."
    assert len(show("x" * 100, limit=10)) == 10
    assert show(5) == "5"
