"""Prediction deadlines: an overrun or an error gives the fallback's answer; else a clear 503.

The clock is injected, so an overrun is a fact of the test, not a race against the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from learning.features.collections import FeatureRow
from learning.serving.answer import LoadedModel, ServingSnapshot, predict
from messages.codec import BodyError, PredictQuery, decode_predict_query
from messages.protocol import Prediction, PredictionError, PredictRequest

NAMES = ("animal_estimate", "zebra_share")


def lookup(collection_id: int, location_id: int) -> FeatureRow | None:
    return FeatureRow(collection_id, location_id, 1_000, (10.0, 0.5), 1_000)


class SteppingClock:
    """A clock that moves by ``step_s`` every time a model is asked: a model as slow as we say."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def model(self, version: int, collection: int, p: float, takes_s: float) -> LoadedModel:
        def predict_one(values: Sequence[float]) -> float:
            self.now += takes_s
            return p

        return LoadedModel(version, collection, NAMES, predict_one)


def raising(version: int) -> LoadedModel:
    def predict_one(values: Sequence[float]) -> float:
        raise ValueError("boom")

    return LoadedModel(version, 1, NAMES, predict_one)


@pytest.fixture()
def clock() -> Iterator[SteppingClock]:
    yield SteppingClock()


def ask(snapshot: ServingSnapshot, clock: Callable[[], float], deadline_ms: float | None = 50.0,
        query_deadline_ms: float | None = None) -> Prediction | PredictionError:
    query = PredictQuery(3, None, query_deadline_ms)
    return predict(snapshot, query, lookup, "c-1", deadline_ms=deadline_ms, clock=clock)


def test_champion_within_its_deadline_answers_itself(clock: SteppingClock) -> None:
    snapshot = ServingSnapshot(clock.model(5, 1, 0.9, 0.010), clock.model(2, 0, 0.1, 0.0))
    answer = ask(snapshot, clock)
    assert isinstance(answer, Prediction)
    assert (answer.model_version, answer.fallback, answer.probability) == (5, False, 0.9)


def test_champion_over_its_deadline_gives_the_fallbacks_answer_marked(
    clock: SteppingClock,
) -> None:
    snapshot = ServingSnapshot(clock.model(5, 1, 0.9, 0.200), clock.model(2, 0, 0.1, 0.0))
    answer = ask(snapshot, clock)
    assert isinstance(answer, Prediction)
    assert (answer.model_version, answer.feature_collection_id, answer.fallback) == (2, 0, True)
    assert answer.label is False and answer.correlation_id == "c-1"


def test_the_requests_own_deadline_wins_over_the_configured_one(clock: SteppingClock) -> None:
    snapshot = ServingSnapshot(clock.model(5, 1, 0.9, 0.030), clock.model(2, 0, 0.1, 0.0))
    tight = ask(snapshot, clock, deadline_ms=50.0, query_deadline_ms=20.0)
    assert isinstance(tight, Prediction) and tight.fallback is True
    loose = ask(snapshot, clock, deadline_ms=10.0, query_deadline_ms=40.0)
    assert isinstance(loose, Prediction) and loose.fallback is False


def test_no_deadline_at_all_waits_for_the_champion(clock: SteppingClock) -> None:
    snapshot = ServingSnapshot(clock.model(5, 1, 0.9, 10.0), clock.model(2, 0, 0.1, 0.0))
    answer = ask(snapshot, clock, deadline_ms=None)
    assert isinstance(answer, Prediction) and answer.fallback is False


def test_overrun_without_a_fallback_is_a_503_saying_so(clock: SteppingClock) -> None:
    answer = ask(ServingSnapshot(clock.model(5, 1, 0.9, 0.200), None), clock)
    assert isinstance(answer, PredictionError)
    assert answer.status == 503
    assert answer.reason.startswith("deadline_exceeded: model 5 took 200 ms")
    assert "no fallback model" in answer.reason


def test_overrun_and_a_failing_fallback_is_a_503_naming_both(clock: SteppingClock) -> None:
    answer = ask(ServingSnapshot(clock.model(5, 1, 0.9, 0.200), raising(2)), clock)
    assert isinstance(answer, PredictionError) and answer.status == 503
    assert "deadline_exceeded" in answer.reason and "fallback model 2 raised ValueError" in (
        answer.reason)


def test_a_slow_fallback_still_answers_it_is_the_last_resort(clock: SteppingClock) -> None:
    snapshot = ServingSnapshot(raising(5), clock.model(2, 0, 0.7, 1.0))
    answer = ask(snapshot, clock)
    assert isinstance(answer, Prediction) and answer.fallback is True and answer.label is True


def test_bad_input_is_a_400_even_past_the_deadline(clock: SteppingClock) -> None:
    snapshot = ServingSnapshot(clock.model(5, 1, 0.9, 1.0), clock.model(2, 0, 0.1, 0.0))
    query = PredictQuery(None, (("animal_estimate", 1.0),), 1.0)
    answer = predict(snapshot, query, lookup, "c-2", deadline_ms=50.0, clock=clock)
    assert isinstance(answer, PredictionError) and answer.status == 400
    assert answer.reason.startswith("missing_feature")


def test_a_stand_in_model_answers_marked_fallback(clock: SteppingClock) -> None:
    snapshot = ServingSnapshot(clock.model(4, 1, 0.9, 0.0), None, stand_in=True)
    answer = ask(snapshot, clock)
    assert isinstance(answer, Prediction) and answer.fallback is True


# --- the wire -----------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "deadline"), [
    (b'{"location_id": 3}', None),
    (b'{"location_id": 3, "deadline_ms": 20}', 20.0),
    (b'{"deadline_ms": 0.5, "features": {"a": 1}}', 0.5),
    (b'{"location_id": 3, "deadline_ms": 60000}', 60000.0),
])
def test_query_carries_an_optional_deadline(body: bytes, deadline: float | None) -> None:
    query = decode_predict_query(body, "application/json")
    assert query.deadline_ms == deadline
    assert type(query.deadline_ms) in (float, type(None))


@pytest.mark.parametrize(("body", "code"), [
    (b'{"location_id": 3, "deadline_ms": 0}', "out_of_range"),
    (b'{"location_id": 3, "deadline_ms": -5}', "out_of_range"),
    (b'{"location_id": 3, "deadline_ms": 60001}', "out_of_range"),
    (b'{"location_id": 3, "deadline_ms": "20"}', "wrong_type"),
    (b'{"location_id": 3, "deadline_ms": true}', "wrong_type"),
    (b'{"location_id": 3, "deadline_ms": null}', "wrong_type"),
    (b'{"deadline_ms": 20}', "missing_field"),
])
def test_bad_deadline_is_a_named_body_error(body: bytes, code: str) -> None:
    with pytest.raises(BodyError) as caught:
        decode_predict_query(body, "application/json")
    assert caught.value.code == code


def test_thespian_request_carries_an_optional_deadline() -> None:
    assert PredictRequest("c", 3).deadline_ms is None
    assert PredictRequest("c", 3, deadline_ms=20.0).deadline_ms == 20.0
