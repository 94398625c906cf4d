"""Answering a prediction from a serving snapshot: champion, fallback, and named input errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.pipeline import Pipeline

from config.job import JobConfiguration, ModelType
from learning.features.collections import FeatureRow
from learning.serving.answer import (
    NO_MODEL_YET,
    HeldRows,
    LoadedModel,
    RowLookup,
    ServingChoice,
    ServingSnapshot,
    choose_models,
    predict,
)
from learning.serving.inference import ServingModel
from learning.training.pipeline import build_pipeline
from messages.codec import PredictQuery
from messages.protocol import Prediction, PredictionError
from storage.errors import StoreUnavailable

CHAMPION_NAMES = ("animal_estimate", "zebra_share", "hour_of_day")
FALLBACK_NAMES = ("animal_estimate", "zebra_share")
CHAMPION_COLLECTION = 3
FALLBACK_COLLECTION = 0


def fitted(n_features: int, model_type: ModelType, seed: int) -> Pipeline:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, n_features))
    y = X[:, 0] + 0.5 * X[:, 1] + rng.normal(size=400) * 0.3 > 0
    return build_pipeline(JobConfiguration(model_type=model_type)).fit(X, y)


@pytest.fixture(scope="module")
def champion_pipeline() -> Pipeline:
    return fitted(len(CHAMPION_NAMES), ModelType.DECISION_TREE, seed=1)


@pytest.fixture(scope="module")
def fallback_pipeline() -> Pipeline:
    return fitted(len(FALLBACK_NAMES), ModelType.LOGISTIC_REGRESSION, seed=2)


def loaded(
    pipeline: Pipeline, version: int, collection: int, names: tuple[str, ...]
) -> LoadedModel:
    serving = ServingModel.from_pipeline(pipeline, version, collection, names)
    return LoadedModel(version, collection, names, serving.predict_one)


@pytest.fixture()
def champion(champion_pipeline: Pipeline) -> LoadedModel:
    return loaded(champion_pipeline, 5, CHAMPION_COLLECTION, CHAMPION_NAMES)


@pytest.fixture()
def fallback(fallback_pipeline: Pipeline) -> LoadedModel:
    return loaded(fallback_pipeline, 2, FALLBACK_COLLECTION, FALLBACK_NAMES)


def broken(version: int, collection: int, names: tuple[str, ...]) -> LoadedModel:
    def predict_one(values: Sequence[float]) -> float:
        raise RuntimeError("model blew up")

    return LoadedModel(version, collection, names, predict_one)


#: Online features per (collection, location); location 7 has rows in both collections.
ROWS = {
    (CHAMPION_COLLECTION, 7): (1.2, 0.8, -0.4),
    (FALLBACK_COLLECTION, 7): (-1.5, -0.9),
    (FALLBACK_COLLECTION, 8): (0.3, 0.1),
}


def lookup(collection_id: int, location_id: int) -> FeatureRow | None:
    values = ROWS.get((collection_id, location_id))
    if values is None:
        return None
    return FeatureRow(collection_id, location_id, 1_000, values, 1_000)


def no_lookup(collection_id: int, location_id: int) -> FeatureRow | None:
    raise AssertionError("explicit features must not look up a location")


def by_location(location_id: int) -> PredictQuery:
    return PredictQuery(location_id=location_id, features=None)


def by_features(**values: float) -> PredictQuery:
    return PredictQuery(location_id=None, features=tuple(values.items()))


def test_no_champion_is_a_503_error(fallback: LoadedModel) -> None:
    answer = predict(ServingSnapshot(None, fallback), by_location(7), lookup, "c-1")
    assert isinstance(answer, PredictionError)
    assert answer.status == 503
    assert answer.correlation_id == "c-1"


def test_by_location_uses_the_row_of_the_champions_collection(
    champion: LoadedModel, champion_pipeline: Pipeline
) -> None:
    answer = predict(ServingSnapshot(champion), by_location(7), lookup, "c-2")
    assert isinstance(answer, Prediction)
    expected = float(champion_pipeline.predict_proba([ROWS[(CHAMPION_COLLECTION, 7)]])[0, 1])
    assert answer.probability == pytest.approx(expected, abs=1e-12)
    assert answer.label == (expected >= 0.5)
    assert answer.model_version == 5
    assert answer.feature_collection_id == CHAMPION_COLLECTION
    assert answer.fallback is False


def test_unknown_location_is_a_400_unknown_location(champion: LoadedModel) -> None:
    # Location 8 has features only in the fallback's collection, not the champion's.
    answer = predict(ServingSnapshot(champion), by_location(8), lookup, "c-3")
    assert isinstance(answer, PredictionError)
    assert answer.status == 400
    assert answer.reason.startswith("unknown_location")
    assert "8" in answer.reason


def test_explicit_features_are_used_in_the_models_order(
    champion: LoadedModel, champion_pipeline: Pipeline
) -> None:
    query = by_features(hour_of_day=0.2, animal_estimate=-1.0, zebra_share=2.0)
    answer = predict(ServingSnapshot(champion), query, no_lookup, "c-4")
    assert isinstance(answer, Prediction)
    expected = float(champion_pipeline.predict_proba([[-1.0, 2.0, 0.2]])[0, 1])
    assert answer.probability == pytest.approx(expected, abs=1e-12)


def test_missing_explicit_features_are_a_400_naming_them(champion: LoadedModel) -> None:
    answer = predict(ServingSnapshot(champion), by_features(zebra_share=0.5), no_lookup, "c-5")
    assert isinstance(answer, PredictionError)
    assert answer.status == 400
    assert answer.reason.startswith("missing_feature")
    assert "animal_estimate" in answer.reason and "hour_of_day" in answer.reason


def test_no_explicit_features_are_a_400_naming_every_one(champion: LoadedModel) -> None:
    answer = predict(ServingSnapshot(champion), PredictQuery(None, ()), no_lookup, "c-7")
    assert isinstance(answer, PredictionError)
    assert answer.status == 400
    assert answer.reason.startswith("missing_feature: ")
    assert all(name in answer.reason for name in champion.feature_names)


def test_unknown_explicit_features_are_a_400_naming_them(champion: LoadedModel) -> None:
    query = by_features(animal_estimate=1.0, zebra_share=0.5, hour_of_day=3.0, moon=1.0, wind=2.0)
    answer = predict(ServingSnapshot(champion), query, no_lookup, "c-6")
    assert isinstance(answer, PredictionError)
    assert answer.status == 400
    assert answer.reason.startswith("unknown_feature")
    assert "moon" in answer.reason and "wind" in answer.reason


def test_champion_that_raises_gives_the_fallbacks_answer_marked_fallback(
    fallback: LoadedModel, fallback_pipeline: Pipeline
) -> None:
    snapshot = ServingSnapshot(broken(5, CHAMPION_COLLECTION, CHAMPION_NAMES), fallback)
    answer = predict(snapshot, by_location(7), lookup, "c-7")
    assert isinstance(answer, Prediction)
    assert answer.fallback is True
    assert answer.model_version == 2
    assert answer.feature_collection_id == FALLBACK_COLLECTION
    # The fallback reads the row of its own collection.
    expected = float(fallback_pipeline.predict_proba([ROWS[(FALLBACK_COLLECTION, 7)]])[0, 1])
    assert answer.probability == pytest.approx(expected, abs=1e-12)
    assert answer.correlation_id == "c-7"


def test_champion_whose_lookup_fails_gives_the_fallbacks_answer(fallback: LoadedModel) -> None:
    def flaky(collection_id: int, location_id: int) -> FeatureRow | None:
        if collection_id == CHAMPION_COLLECTION:
            raise OSError("feature store unavailable")
        return lookup(collection_id, location_id)

    champion = LoadedModel(5, CHAMPION_COLLECTION, CHAMPION_NAMES, lambda values: 0.9)
    answer = predict(ServingSnapshot(champion, fallback), by_location(7), flaky, "c-8")
    assert isinstance(answer, Prediction)
    assert answer.fallback is True


def test_champion_that_raises_without_a_fallback_is_a_503() -> None:
    snapshot = ServingSnapshot(broken(5, CHAMPION_COLLECTION, CHAMPION_NAMES), None)
    answer = predict(snapshot, by_location(7), lookup, "c-9")
    assert isinstance(answer, PredictionError)
    assert answer.status == 503
    assert answer.correlation_id == "c-9"


def test_champion_and_fallback_both_failing_is_a_503() -> None:
    snapshot = ServingSnapshot(
        broken(5, CHAMPION_COLLECTION, CHAMPION_NAMES),
        broken(2, FALLBACK_COLLECTION, FALLBACK_NAMES),
    )
    answer = predict(snapshot, by_location(7), lookup, "c-10")
    assert isinstance(answer, PredictionError)
    assert answer.status == 503
    assert "RuntimeError" in answer.reason
    assert answer.correlation_id == "c-10"


@pytest.mark.parametrize(
    ("champion_ok", "query", "row_lookup"),
    [
        (True, by_location(7), lookup),  # a prediction
        (True, by_location(99), lookup),  # a 400
        (True, by_features(zebra_share=1.0), no_lookup),  # a 400 naming features
        (False, by_location(7), lookup),  # a fallback prediction
    ],
)
def test_correlation_id_is_echoed_on_every_answer(
    champion: LoadedModel,
    fallback: LoadedModel,
    champion_ok: bool,
    query: PredictQuery,
    row_lookup: RowLookup,
) -> None:
    first = champion if champion_ok else broken(5, CHAMPION_COLLECTION, CHAMPION_NAMES)
    answer = predict(ServingSnapshot(first, fallback), query, row_lookup, "corr-42")
    assert answer.correlation_id == "corr-42"


# --- which models a predictor serves ----------------------------------------------------------


@dataclass(frozen=True)
class Record:
    version: int
    status: str
    feature_collection_id: int


def test_champion_on_a_usable_collection_is_served_with_the_newest_original_model_as_fallback(
) -> None:
    records = [Record(1, "retired", 0), Record(2, "retired", 1), Record(3, "champion", 1)]
    choice = choose_models(records, frozenset({0, 1}), active_collection=1)
    assert choice == ServingChoice(3, 1, False, "")


def test_champion_on_an_invalid_collection_is_replaced_by_a_stand_in_on_the_active_one() -> None:
    records = [Record(1, "retired", 0), Record(2, "retired", 1), Record(3, "retired", 1),
               Record(4, "champion", 2), Record(5, "rejected", 1)]
    choice = choose_models(records, frozenset({0, 1}), active_collection=1)
    assert (choice.first, choice.stand_in, choice.fallback) == (3, True, 1)
    assert "champion 4" in choice.reason and "collection 2" in choice.reason


def test_without_a_model_on_the_active_collection_the_newest_usable_one_stands_in() -> None:
    records = [Record(1, "retired", 0), Record(2, "champion", 2)]
    choice = choose_models(records, frozenset({0, 1}), active_collection=1)
    assert (choice.first, choice.stand_in, choice.fallback) == (1, True, None)


def test_no_model_on_a_valid_collection_means_none_served_with_the_reason() -> None:
    choice = choose_models([Record(1, "champion", 2), Record(2, "candidate", 1)],
                           frozenset({0, 1}), active_collection=1)
    assert choice.first is None and choice.reason.startswith("no model on a valid feature")
    assert choose_models([], frozenset({0}), 0) == ServingChoice(None, None, False,
                                                                 NO_MODEL_YET)


def test_snapshot_without_a_model_answers_503_with_its_reason() -> None:
    answer = predict(ServingSnapshot(None, None, reason="no model on a valid feature collection"),
                     by_location(7), lookup, "c-11")
    assert isinstance(answer, PredictionError) and answer.status == 503
    assert answer.reason == "no model on a valid feature collection"


def test_held_rows_answer_with_the_last_row_read_while_the_store_is_down() -> None:
    rows = {(1, 7): FeatureRow(1, 7, 100, (3.0, 0.5), 100)}
    down = False

    def read(collection: int, location: int) -> FeatureRow | None:
        if down:
            raise StoreUnavailable("couchbase: unreachable")
        return rows.get((collection, location))

    held = HeldRows(read, limit=2)
    assert held(1, 7) == rows[(1, 7)] and held(1, 8) is None
    rows[(1, 7)] = FeatureRow(1, 7, 200, (4.0, 0.5), 200)
    assert held(1, 7).as_of_ms == 200  # type: ignore[union-attr]
    down = True
    assert held(1, 7).as_of_ms == 200  # type: ignore[union-attr]  # held through the outage
    with pytest.raises(StoreUnavailable):
        held(1, 9)  # never read: nothing to hold
    down = False
    rows.update({(1, 1): FeatureRow(1, 1, 1, (1.0,), 1), (1, 2): FeatureRow(1, 2, 1, (1.0,), 1)})
    held(1, 1)
    held(1, 2)
    down = True
    with pytest.raises(StoreUnavailable):
        held(1, 7)  # past the limit, the oldest held row went first


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.floats(allow_nan=False, allow_infinity=False)
       | st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e-300, 5e-324, 0.1 + 0.2]),
       st.integers(0, 2**40), st.integers(0, 2**31), st.booleans())
def test_a_predictions_json_is_what_json_dumps_gives(label: bool, probability: float,
                                                      version: int, collection: int,
                                                      fallback: bool) -> None:
    from messages.codec import encode_prediction_json as prediction_json

    answer = Prediction("", label, probability, version, collection, fallback)
    expected = json.dumps({"label": label, "probability": probability, "model_version": version,
                           "feature_collection_id": collection, "fallback": fallback},
                          separators=(",", ":")).encode()
    assert prediction_json(answer) == expected
    assert json.loads(prediction_json(answer))["probability"] == probability


def test_a_prediction_that_is_not_a_number_is_refused_not_written() -> None:
    from messages.codec import encode_prediction_json as prediction_json

    with pytest.raises(ValueError):
        prediction_json(Prediction("", False, float("nan"), 1, 1, False))


def test_a_rows_prepared_input_is_made_once_and_remade_when_the_row_changes() -> None:
    prepared: list[Sequence[float]] = []

    def prepare(values: Sequence[float]) -> list[float]:
        prepared.append(values)
        return [2.0 * v for v in values]

    model = LoadedModel(1, 1, ("a",), lambda v: v[0] / 10, prepare, lambda x: x[0] / 10)
    rows = {7: FeatureRow(1, 7, 1, (1.0,), 1)}
    snapshot = ServingSnapshot(model)
    query = PredictQuery(7, None)

    def ask() -> float:
        answer = predict(snapshot, query, lambda c, loc: rows.get(loc))
        assert isinstance(answer, Prediction)
        return answer.probability

    assert [ask(), ask(), ask()] == [0.2, 0.2, 0.2]
    assert len(prepared) == 1
    rows[7] = FeatureRow(1, 7, 2, (3.0,), 2)  # a newer row: its own input
    assert ask() == 0.6
    assert len(prepared) == 2


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text("abcxyz_", min_size=1, max_size=6), min_size=1, max_size=9,
                unique=True).flatmap(lambda names: st.tuples(
                    st.just(tuple(names)),
                    st.lists(st.floats(-1e6, 1e6), min_size=len(names), max_size=len(names)))))
def test_explicit_features_are_taken_in_the_models_order(case: tuple[tuple[str, ...],
                                                                     list[float]]) -> None:
    from learning.serving.answer import feature_values
    from learning.serving.compiled import features_from_mapping

    names, values = case
    model = LoadedModel(1, 1, names, lambda v: 0.0)
    given = dict(zip(names, values, strict=True))
    query = PredictQuery(None, tuple(sorted(given.items())))
    assert feature_values(model, query, lambda c, loc: None) == features_from_mapping(names,
                                                                                     given)
