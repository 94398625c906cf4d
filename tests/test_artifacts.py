"""Model artifacts: skops bytes that load back only when they hold nothing but our types."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
import skops.io as sio
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import SVC

from config.job import JobConfiguration, ModelType
from learning.models.artifacts import (
    ALLOWED_TYPES,
    MAX_MEMBERS,
    MAX_UNCOMPRESSED_BYTES,
    SKOPS_TRUSTED,
    UntrustedArtifact,
    artifact_types,
    dump_model,
    load_model,
)
from learning.training.pipeline import build_pipeline
from tests.faulty_trainer import (
    BOMB_DECLARED_BYTES,
    bomb_artifact,
    empty_zip_artifact,
    pipeline_schema_artifact,
)


def fitted(model_type: ModelType) -> Pipeline:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    X[::7, 1] = np.nan
    X[:, 3] = np.nan  # an all-NaN column, as early in a system's life
    y = X[:, 0] + rng.normal(size=200) > 0
    small = (
        (("n_estimators", 5),)
        if model_type in (ModelType.RANDOM_FOREST, ModelType.GRADIENT_BOOSTING)
        else ()
    )
    return build_pipeline(JobConfiguration(model_type=model_type, hyperparameters=small)).fit(X, y)


@pytest.mark.parametrize("model_type", list(ModelType))
def test_every_model_type_round_trips_with_identical_predictions(model_type: ModelType) -> None:
    pipeline = fitted(model_type)
    data = dump_model(pipeline)
    assert not data.startswith(b"\x80")  # not a pickle stream: a zip
    loaded = load_model(data)
    X = np.random.default_rng(1).normal(size=(50, 4))
    np.testing.assert_array_equal(loaded.predict_proba(X), pipeline.predict_proba(X))


def test_pinned_allowlist_is_exactly_what_our_pipelines_need() -> None:
    found: set[str] = set()
    untrusted: set[str] = set()
    for model_type in ModelType:
        data = dump_model(fitted(model_type))
        found |= artifact_types(data)
        untrusted |= set(sio.get_untrusted_types(data=data))
    assert found == ALLOWED_TYPES
    assert untrusted == set(SKOPS_TRUSTED)


def test_artifact_with_a_function_transformer_calling_os_system_is_refused() -> None:
    evil = Pipeline([("run", FunctionTransformer(os.system))])
    with pytest.raises(UntrustedArtifact) as caught:
        load_model(sio.dumps(evil))
    assert "posix.system" in caught.value.types or "nt.system" in caught.value.types


def test_artifact_with_a_trusted_but_unlisted_sklearn_class_is_refused() -> None:
    X = np.random.default_rng(0).normal(size=(40, 2))
    other = Pipeline([("model", SVC())]).fit(X, X[:, 0] > 0)
    with pytest.raises(UntrustedArtifact) as caught:
        load_model(sio.dumps(other))
    assert "sklearn.svm._classes.SVC" in caught.value.types


def test_bytes_that_are_not_a_skops_file_are_refused() -> None:
    with pytest.raises(UntrustedArtifact):
        load_model(b"\x80\x04not a model")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("other.txt", "x")
    with pytest.raises(UntrustedArtifact):
        load_model(buffer.getvalue())


def test_a_schema_skops_itself_chokes_on_is_refused_as_untrusted_with_the_cause() -> None:
    # The schema names only Pipeline (allowed), but skops raises TypeError reading it.
    with pytest.raises(UntrustedArtifact, match="TypeError") as caught:
        load_model(pipeline_schema_artifact())
    assert isinstance(caught.value.__cause__, TypeError)


def test_an_empty_zip_is_refused() -> None:
    with pytest.raises(UntrustedArtifact, match="not a skops artifact"):
        load_model(empty_zip_artifact())


def test_a_member_declaring_a_huge_size_is_refused_before_anything_is_unpacked() -> None:
    # Apart from the extra member, this is a real pipeline that would load.
    assert BOMB_DECLARED_BYTES > MAX_UNCOMPRESSED_BYTES
    with pytest.raises(UntrustedArtifact, match=f"over {MAX_UNCOMPRESSED_BYTES}"):
        load_model(bomb_artifact())
    assert isinstance(load_model(bomb_artifact(declared=1024)), Pipeline)


def test_an_archive_of_too_many_members_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(MAX_MEMBERS + 1):
            archive.writestr(str(index), b"")
    with pytest.raises(UntrustedArtifact, match=f"over {MAX_MEMBERS} members"):
        load_model(buffer.getvalue())


@pytest.mark.parametrize("data", [b"", b"PK\x05\x06" + b"\0" * 18, b"PK\x03\x04" * 100,
                                  b"\x80\x04not a model"])
def test_bytes_that_are_no_zip_give_only_untrusted_artifact(data: bytes) -> None:
    with pytest.raises(UntrustedArtifact):
        load_model(data)
