"""Compiled forms: what predictors serve without scikit-learn. The decoded form answers
exactly as scikit-learn does for every model type; corrupt bytes are a named error, never
a crash or an endless walk; and a predictor's process never imports scikit-learn."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.job import ModelType
from learning.compiled import CompiledFormError, CompiledModel, TreeWalk
from learning.inference import ServingModel
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


def test_wrong_length_or_infinite_values_are_refused() -> None:
    form = CompiledModel.from_bytes(compiled_bytes(ModelType.LOGISTIC_REGRESSION))
    with pytest.raises(ValueError):
        form.predict_one([1.0, 2.0])
    with pytest.raises(ValueError):
        form.predict_one([math.inf, 0, 0, 0, 0, 0])


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
])
def test_corrupt_forms_are_refused_by_name(form: bytes, complaint: str) -> None:
    with pytest.raises(CompiledFormError, match=complaint):
        CompiledModel.from_bytes(form)


def test_arrays_whose_bytes_do_not_match_their_shape_are_refused() -> None:
    document = msgpack.unpackb(compiled_bytes(ModelType.DECISION_TREE))
    document["walk"]["left"]["data"] = document["walk"]["left"]["data"][:-3]
    with pytest.raises(CompiledFormError, match="shape"):
        CompiledModel.from_bytes(msgpack.packb(document))
    document = msgpack.unpackb(compiled_bytes(ModelType.RANDOM_FOREST))
    document["walk"]["depth"] = 10**9
    with pytest.raises(CompiledFormError, match="depth"):
        CompiledModel.from_bytes(msgpack.packb(document))


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
    assert isinstance(model.predict_one([0.5] * model.n_features), float)


_FORMS = {kind: compiled_bytes(kind) for kind in (ModelType.DECISION_TREE,
                                                  ModelType.GRADIENT_BOOSTING)}


def test_a_predictor_never_imports_scikit_learn() -> None:
    # A lean process is torn down fast when killed; the predictor needs numpy only.
    code = ("import sys, actors.predictor; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', "
            "'skops'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
