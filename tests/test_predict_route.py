"""The predictor's ``POST /model``: its fast lane (the usual JSON query, no Request or
Response objects) and its whole path answer alike, and count each request once.

Over real sockets, on a real daemon: tests/test_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from actors.edge import Request
from actors.predictor import Predictor
from config.settings import Settings
from learning.features.collections import FeatureCollection, FeatureRow
from learning.serving.answer import LoadedModel, ServingSnapshot
from storage import FEATURES_FILE
from storage.backend import StoreBackend
from storage.sqlite.features import SQLiteFeatureStore

FEATURES = ("animal_estimate", "zebra_share")


@pytest.fixture
def predictor(tmp_path: Path) -> Iterator[Predictor]:
    store = SQLiteFeatureStore(tmp_path / FEATURES_FILE)
    store.register_collection(FeatureCollection(1, 0, FEATURES))
    store.write_rows([FeatureRow(1, 7, 100, (3.0, 0.5), 100)])
    store.close()
    predictor = Predictor()
    predictor.settings = Settings(data_dir=str(tmp_path))
    predictor.backend = StoreBackend(predictor.settings)  # as on_start opens them
    predictor.features = predictor.backend.features()
    model = LoadedModel(4, 1, FEATURES, lambda values: 0.25 + values[1])
    predictor.snapshot = ServingSnapshot(model, reason="")
    yield predictor
    predictor.on_stop()


def _whole(predictor: Predictor, body: bytes, content_type: str | None) -> tuple[int, bytes]:
    headers = {} if content_type is None else {"content-type": content_type}
    response = predictor._post_model(Request("POST", "/model", "", headers, body, "test"))
    return response.status, response.body


@pytest.mark.parametrize("body", [
    b'{"location_id": 7}',
    b'{"location_id":7,"deadline_ms":20}',
    b'{"features": {"zebra_share": 0.125, "animal_estimate": 2.0}}',
    b'{"location_id": 8}',  # no row: a 400 the model's answer gives
    b'{"features": {"zebra_share": 0.5}}',  # a feature missing: likewise
])
def test_the_fast_lane_answers_as_the_whole_path_does(predictor: Predictor,
                                                      body: bytes) -> None:
    fast = predictor._post_model_json(body, "application/json")
    assert fast is not None and predictor._post_model_json(body, None) == fast
    # The same query by the whole path (a Content-Type the lane leaves to it).
    assert _whole(predictor, body, "application/json; charset=utf-8") == fast
    assert json.loads(fast[1]) == json.loads(_whole(predictor, body, "application/json")[1])


def test_the_fast_lane_leaves_other_requests_untouched_and_each_is_counted_once(
        predictor: Predictor) -> None:
    for body, content_type in ((b'{"location_id": "seven"}', "application/json"),
                               (b"{", None),
                               (msgpack.packb({"location_id": 7}), "application/msgpack"),
                               (b'{"location_id": 7}', "text/plain")):
        assert predictor._post_model_json(body, content_type) is None
    assert predictor.counters.snapshot() == dict.fromkeys(
        ("ok", "fallback", "bad_request", "unavailable"), 0)
    status, body = _whole(predictor, msgpack.packb({"location_id": 7}), "application/msgpack")
    assert status == 200 and msgpack.unpackb(body)["probability"] == 0.75
    assert _whole(predictor, b'{"location_id": "seven"}', None)[0] == 400
    assert _whole(predictor, b'{"location_id": 7}', "text/plain")[0] == 415
    assert _whole(predictor, b'{"location_id": 7}', None)[0] == 200  # by the fast lane
    assert _whole(predictor, b'{"location_id": 8}', None)[0] == 400
    assert predictor.counters.snapshot() == {"ok": 2, "fallback": 0, "bad_request": 3,
                                             "unavailable": 0}
