"""FactCursor: per-writer positions that merge forward and survive their text form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.facts import FactCursor

positions = st.dictionaries(st.text(min_size=1, max_size=8),
                            st.tuples(st.integers(0, 10**12), st.integers(0, 10**6)),
                            max_size=6)


@given(positions, positions)
def test_merge_takes_each_writers_furthest_position_and_covers_both(
        a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]) -> None:
    x, y = FactCursor.of(a), FactCursor.of(b)
    merged = x.merge(y)
    assert merged == y.merge(x)
    assert merged.covers(x) and merged.covers(y)
    for writer in a.keys() | b.keys():
        assert merged.position(writer) == max(a.get(writer, (0, 0)), b.get(writer, (0, 0)))


@given(positions)
def test_text_form_round_trips(a: dict[str, tuple[int, int]]) -> None:
    cursor = FactCursor.of(a)
    assert FactCursor.from_text(cursor.to_text()) == cursor


def test_a_writer_not_in_the_cursor_is_at_its_start() -> None:
    cursor = FactCursor.of({"w": (3, 1)})
    assert cursor.position("other") == (0, 0)
    assert cursor.at("other", 2).position("other") == (2, 0)
    assert not FactCursor().covers(cursor) and cursor.covers(FactCursor())


@pytest.mark.parametrize("text", [
    "", "{}", "[1]", '[["w", 1]]', '[["w", -1, 0]]', '[["w", 1, 0.5]]', '[[1, 1, 0]]',
    '[["w", 1, 0], ["w", 2, 0]]', '[["w", true, 0]]',
])
def test_a_malformed_cursor_text_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        FactCursor.from_text(text)
