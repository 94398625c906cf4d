"""messages._build: the hot path's builders give the very objects the constructors would."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._http_message import Response
from messages._build import builder
from messages.codec import PredictQuery, decode_predict_query
from messages.protocol import Prediction

_finite = st.floats(allow_nan=False)


@given(st.text(max_size=8), st.booleans(), _finite, st.integers(), st.integers(), st.booleans())
def test_a_built_prediction_is_the_one_the_constructor_makes(
        correlation_id: str, label: bool, probability: float, version: int, collection: int,
        fallback: bool) -> None:
    args = (correlation_id, label, probability, version, collection, fallback)
    built, made = builder(Prediction)(*args), Prediction(*args)
    assert type(built) is Prediction
    assert built == made and hash(built) == hash(made) and repr(built) == repr(made)
    with pytest.raises(AttributeError):  # still frozen
        built.label = not label  # type: ignore[misc]


def test_queries_and_responses_are_built_alike() -> None:
    assert builder(PredictQuery)(7, None, None) == PredictQuery(7, None, None)
    assert decode_predict_query(b'{"location_id": 7}', None) == PredictQuery(7, None, None)
    pairs = (("a", 1.0), ("b", 2.0))
    assert decode_predict_query(b'{"features": {"b": 2.0, "a": 1.0}}', None) == PredictQuery(
        None, pairs, None)
    built = builder(Response)(200, b"{}", "application/json", ())
    assert built == Response(200, b"{}") and repr(built) == repr(Response(200, b"{}"))


def test_a_class_the_builder_cannot_build_faithfully_is_refused() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class Derived:
        x: int
        double: int = field(init=False)

        def __post_init__(self) -> None:
            object.__setattr__(self, "double", 2 * self.x)

    with pytest.raises(TypeError, match="slotted"):
        builder(NoSlots)
    with pytest.raises(TypeError, match="__post_init__"):
        builder(Derived)
    with pytest.raises(TypeError):
        builder(int)
