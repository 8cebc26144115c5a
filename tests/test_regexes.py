"""relay.regexes: which operator regexes may run on `re` without a timeout, and which are refused
as too large to compile."""

from __future__ import annotations

import pytest

from relay.regexes import PatternError, compile_regex, repeats_nothing


@pytest.mark.parametrize(
    ("source", "bounded"),
    [
        ("^etl7-", True),
        ("^(billing|payments)-x$", True),
        ("(?=a)b", True),
        ("(a)\\1", True),
        ("sync-.*", False),
        ("^(a|aa)+$", False),  # the one that backtracked for hours on `re`
        ("a{3}", False),
        ("[a-z]?", False),
        ("(?:x(?:y*))", False),  # a repeat inside groups counts too
        ("(?!a+)b", False),  # and inside an assertion
    ],
)
def test_only_a_pattern_without_any_repeat_runs_without_a_timeout(
    source: str, bounded: bool
) -> None:
    assert repeats_nothing(source) is bounded


def test_nested_repeats_past_the_limit_are_refused_before_compiling() -> None:
    with pytest.raises(PatternError, match="nested repeats multiply past 10,000"):
        compile_regex("(?:(?:(?:a{100}){100}){100}){10}")
    assert compile_regex("(?:a{100}){100}").search("a" * 10_000) is not None
