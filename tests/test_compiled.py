"""Compiled forms: what predictors serve without scikit-learn. The decoded form answers
exactly as scikit-learn does for every model type; corrupt bytes are a named error, never
a crash or an endless walk; and a predictor's process never imports scikit-learn."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from config.job import ModelType
from learning.serving.compiled import CompiledFormError, CompiledModel, TreeWalk
from learning.serving.inference import ServingModel, checked_compiled_form
from tests.test_inference import NAMES, fitted, probe_rows, split_value_rows

REPO = Path(__file__).resolve().parent.parent


def compiled_bytes(model_type: ModelType) -> bytes:
    serving = ServingModel.from_pipeline(fitted(model_type), 1, 1, NAMES)
    assert serving.compiled is not None
    return serving.compiled.to_bytes()


@pytest.mark.parametrize("model_type", list(ModelType))
def test_decoded_form_answers_exactly_as_sklearn(model_type: ModelType) -> None:
    pipeline = fitted(model_type)
    form = CompiledModel.from_bytes(compiled_bytes(model_type))
    X = probe_rows()
    answers = np.array([form.predict_one(tuple(row)) for row in X])
    np.testing.assert_allclose(answers, pipeline.predict_proba(X)[:, 1], rtol=0, atol=1e-12)
    assert form.n_features == len(NAMES)


def test_decoded_tree_compares_like_sklearn_at_the_exact_split_values() -> None:
    pipeline = fitted(ModelType.DECISION_TREE)
    form = CompiledModel.from_bytes(compiled_bytes(ModelType.DECISION_TREE))
    X = split_value_rows(pipeline)
    np.testing.assert_array_equal([form.predict_one(r) for r in X],
                                  pipeline.predict_proba(X)[:, 1])


@pytest.mark.parametrize("model_type", [ModelType.LOGISTIC_REGRESSION,
                                        ModelType.DECISION_TREE])
def test_wrong_length_or_infinite_values_are_refused(model_type: ModelType) -> None:
    form = CompiledModel.from_bytes(compiled_bytes(model_type))
    with pytest.raises(ValueError):
        form.predict_one([1.0, 2.0])
    for row in ([math.inf, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, -math.inf],
                [math.inf, math.nan, 0, 0, 0, 0], [math.inf, -math.inf, 0, 0, 0, 0],
                [math.nan, -math.inf, math.nan, 0, 0, 0]):
        with pytest.raises(ValueError):
            form.predict_one(row)
    if form.float32_inputs:  # finite, but past float32: infinite as the tree would see it
        with pytest.raises(ValueError):
            form.predict_one([1e300, 0, 0, 0, 0, 0])
    # NaN alone is "missing": imputed, answered as the row with the imputed value.
    imputed = form.predict_one([math.nan, 0, 0, 0, 0, 0])
    assert imputed == form.predict_one([form.statistics[0], 0, 0, 0, 0, 0])


def tree_form(left: list[int], right: list[int], feature: list[int]) -> bytes:
    n = len(left)
    walk = TreeWalk(left, right, feature, [0.5] * n, [0.25] * n)
    return CompiledModel(walk, (0.0, 0.0), True).to_bytes()


@pytest.mark.parametrize(("form", "complaint"), [
    (b"", "not a compiled model"),
    (b"\xc1", "not a compiled model"),
    (msgpack.packb({"format": 99}), "format"),
    (msgpack.packb({"format": 1, "kind": "forest"}), "known kind"),
    # A child pointing back at its parent would make the walk loop for ever.
    (tree_form([1, 0, -1], [2, 2, -1], [0, 0, 0]), "follow their node"),
    (tree_form([1, -1, -1], [5, -1, -1], [0, 0, 0]), "within the tree"),
    (tree_form([1, -1, -1], [-1, -1, -1], [0, 0, 0]), "both children or neither"),
    (tree_form([1, -1, -1], [2, -1, -1], [7, 0, 0]), "feature outside"),
    (msgpack.packb({"format": 1, "kind": ["tree"]}), "known kind"),
])
def test_corrupt_forms_are_refused_by_name(form: bytes, complaint: str) -> None:
    with pytest.raises(CompiledFormError, match=complaint):
        CompiledModel.from_bytes(form)


def test_arrays_whose_bytes_do_not_match_their_shape_are_refused() -> None:
    document = msgpack.unpackb(compiled_bytes(ModelType.DECISION_TREE))
    document["walk"]["left"]["data"] = document["walk"]["left"]["data"][:-3]
    with pytest.raises(CompiledFormError, match="shape"):
        CompiledModel.from_bytes(msgpack.packb(document))
    document = msgpack.unpackb(compiled_bytes(ModelType.DECISION_TREE))
    document["walk"]["left"]["shape"] = [0, 2**62]  # a product that matches no bytes...
    document["walk"]["left"]["data"] = b""  # ...but these: still refused, by name
    with pytest.raises(CompiledFormError, match="left"):
        CompiledModel.from_bytes(msgpack.packb(document))
    document = msgpack.unpackb(compiled_bytes(ModelType.RANDOM_FOREST))
    document["walk"]["depth"] = 10**9
    with pytest.raises(CompiledFormError, match="depth"):
        CompiledModel.from_bytes(msgpack.packb(document))


@pytest.mark.parametrize(("kind", "field", "bad"), [
    (ModelType.DECISION_TREE, "value", math.nan),
    (ModelType.DECISION_TREE, "value", 1.5),  # a tree's leaves are probabilities
    (ModelType.DECISION_TREE, "threshold", math.nan),
    (ModelType.GRADIENT_BOOSTING, "value", math.inf),
    (ModelType.GRADIENT_BOOSTING, "threshold", math.nan),
])
def test_values_a_walk_would_answer_nan_or_nonsense_with_are_refused(
        kind: ModelType, field: str, bad: float) -> None:
    document = msgpack.unpackb(compiled_bytes(kind))
    values = np.frombuffer(document["walk"][field]["data"], "<f8").copy()
    values[-1] = bad
    document["walk"][field]["data"] = values.tobytes()
    with pytest.raises(CompiledFormError):
        CompiledModel.from_bytes(msgpack.packb(document))


@pytest.mark.filterwarnings("ignore:Skipping features without any observed values")
def test_a_pipeline_whose_imputer_dropped_a_column_has_no_compiled_form() -> None:
    # A column never seen (all NaN) is dropped by an imputer that does not keep empty
    # features, which shifts the model's inputs: the walk would answer wrongly.
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, len(NAMES)))
    X[:, 2] = np.nan
    y = X[:, 0] > 0
    pipeline = Pipeline([("impute", SimpleImputer(strategy="median")),
                         ("model", DecisionTreeClassifier(max_depth=4, random_state=0))]).fit(X, y)
    serving = ServingModel.from_pipeline(pipeline, 1, 1, NAMES)
    assert serving.compiled is None
    assert checked_compiled_form(pipeline, NAMES, X[:50]) is None
    row = [0.3, -1.0, math.nan, 0.0, 0.0, 0.0]
    assert serving.predict_one(row) == pytest.approx(pipeline.predict_proba([row])[0, 1])


@pytest.mark.parametrize("model_type", list(ModelType))
def test_the_checked_form_of_each_model_type_is_the_one_predictors_load(
        model_type: ModelType) -> None:
    pipeline = fitted(model_type)
    form = checked_compiled_form(pipeline, NAMES, probe_rows()[:64])
    assert form is not None
    assert CompiledModel.from_bytes(form).predict_one(probe_rows()[5]) == pytest.approx(
        pipeline.predict_proba(probe_rows()[5:6])[0, 1], abs=1e-12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from([ModelType.DECISION_TREE,
                                             ModelType.GRADIENT_BOOSTING]))
def test_mangled_forms_are_refused_or_answer_and_never_hang(data: st.DataObject,
                                                        kind: ModelType) -> None:
    form = bytearray(_FORMS[kind])
    for _ in range(data.draw(st.integers(1, 8))):
        form[data.draw(st.integers(0, len(form) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(form)))
    try:
        model = CompiledModel.from_bytes(bytes(form[:cut]))
    except CompiledFormError:
        return
    answers: list[float] = []
    walk = threading.Thread(target=lambda: answers.append(
        model.predict_one([0.5] * model.n_features)), daemon=True)
    walk.start()
    walk.join(10.0)  # a walk is microseconds: one still going has lost its way
    assert not walk.is_alive(), "the walk of a form that decoded never ended"
    assert len(answers) == 1 and math.isfinite(answers[0])


_FORMS = {kind: compiled_bytes(kind) for kind in (ModelType.DECISION_TREE,
                                                  ModelType.GRADIENT_BOOSTING)}


@pytest.mark.parametrize("module", ["actors.predictor", "actors.learner", "actors.publisher",
                                    "actors.feature_generator", "actors.collector"])
def test_no_actor_imports_scikit_learn_until_it_needs_it(module: str) -> None:
    # A lean process is torn down fast when killed, and starts fast: the predictor needs
    # numpy only; the learner and the publisher import scikit-learn and skops (1.5 s, 130 MB)
    # on their first training, rollback or compile, not at start.
    code = (f"import sys, {module}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', "
            "'skops', 'pytest'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


def _thresholds(pipeline: Pipeline) -> list[float]:
    """Every split threshold of a fitted tree model (each tree of an ensemble)."""
    model = pipeline.named_steps["model"]
    estimators = getattr(model, "estimators_", None)
    trees = ([model.tree_] if estimators is None
             else [e.tree_ for e in np.asarray(estimators, dtype=object).ravel()])
    return sorted({float(t) for tree in trees for t, left in zip(tree.threshold,
                                                                  tree.children_left,
                                                                  strict=True) if left != -1})


_PIPELINES = {t: fitted(t) for t in (ModelType.DECISION_TREE, ModelType.RANDOM_FOREST,
                                     ModelType.GRADIENT_BOOSTING)}
_THRESHOLDS = {t: _thresholds(p) for t, p in _PIPELINES.items()}
_CHECKED: dict[ModelType, bytes | None] = {t: checked_compiled_form(p, NAMES)
                                            for t, p in _PIPELINES.items()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(_PIPELINES)), st.data())
def test_served_answers_are_sklearns_at_and_around_every_threshold(model_type: ModelType,
                                                                    data: st.DataObject) -> None:
    """A prediction served from a location's row (the prepared input kept) or from explicit
    values is ``predict_proba``'s, for values at a split threshold, one float32 step either
    side, anywhere, or missing."""
    from learning.serving.answer import load_serving_model

    pipeline, thresholds = _PIPELINES[model_type], _THRESHOLDS[model_type]
    at = st.sampled_from(thresholds)
    value = (at | at.map(lambda t: float(np.nextafter(np.float32(t), np.float32(np.inf))))
             | at.map(lambda t: float(np.nextafter(np.float32(t), np.float32(-np.inf))))
             | st.floats(-60, 60) | st.just(math.nan))
    row = tuple(data.draw(st.lists(value, min_size=len(NAMES), max_size=len(NAMES))))
    record = type("Record", (), {"version": 1, "feature_collection_id": 1,
                                 "lineage": '{"feature_collection": {"features": '
                                            + str(list(NAMES)).replace("'", '"') + "}}"})()
    form = _CHECKED[model_type]
    assert form is not None
    loaded = load_serving_model(record, form, lambda: b"")
    assert loaded.prepare is not None and loaded.walk is not None
    expected = float(pipeline.predict_proba(np.array([row]))[0, 1])
    assert loaded.walk(loaded.prepare(row)) == pytest.approx(expected, abs=1e-12)
    assert loaded.predict_one(row) == pytest.approx(expected, abs=1e-12)
