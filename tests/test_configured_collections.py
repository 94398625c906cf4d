"""Feature collections declared in configuration (``[[features.collections]]``).

Loading: each table names registered feature types (built-in or a plugin's), refused with
``features.collections[i].features`` named otherwise. Registration: a new set of features
gets the next id, the same set keeps its collection across restarts and concurrent
registrations, older collections stay. End to end: a daemon configured with a collection
registers it, makes it active and trains its model on it.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from config.settings import ConfiguredCollection, load_settings
from daemon.demo import last_midnight_ms
from daemon.gateway import HttpClient, send_items
from learning.collections import FeatureCollection, valid_collection
from learning.features import (
    ORIGINAL_FEATURES,
    default_collections,
    register_configured_collections,
)
from learning.simulator import Savanna, reading_item
from storage import FEATURES_FILE, open_sqlite_stores
from storage.sqlite_features import SQLiteFeatureStore
from tests.e2e_support import RunningDaemon, running_daemon, wait_for

REPO = Path(__file__).resolve().parent.parent
TREND = ("animal_estimate", "trend", "latest_estimate", "zebra_share")


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Any:
    path = tmp_path / "rml.toml"
    path.write_text(text)
    return load_settings(path, environ or {})


def refused(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return caught.value


# --- loading ---------------------------------------------------------------------------------


def test_collections_are_loaded_from_an_array_of_tables_in_order(tmp_path: Path) -> None:
    settings = load(tmp_path, """
[features]
max_crashes = 4

[[features.collections]]
name = "trend"
features = ["animal_estimate", "trend", "latest_estimate", "zebra_share"]

[[features.collections]]
features = ["reading_count", "hour_sin", "hour_cos"]
""")
    assert settings.features.max_crashes == 4
    assert settings.features.collections == (
        ConfiguredCollection(TREND, "trend"),
        ConfiguredCollection(("reading_count", "hour_sin", "hour_cos"), ""),
    )


def test_no_collections_by_default() -> None:
    assert load_settings(None, {}).features.collections == ()


def test_an_unknown_feature_is_refused_naming_the_collection_and_the_feature(
        tmp_path: Path) -> None:
    error = refused(tmp_path, """
[[features.collections]]
features = ["animal_estimate"]
[[features.collections]]
features = ["animal_estimate", "unicorn_density"]
""")
    assert error.key == "features.collections[1].features"
    assert "'unicorn_density'" in error.problem


def test_a_plugins_feature_type_may_be_named(tmp_path: Path) -> None:
    settings = load(tmp_path, """
[features]
plugins = ["tests.broken_features"]
[[features.collections]]
features = ["animal_estimate", "broken_range"]
""")
    assert settings.features.collections[0].features == ("animal_estimate", "broken_range")


def test_a_plugin_that_fails_to_import_is_named_with_the_unknown_feature(
        tmp_path: Path) -> None:
    error = refused(tmp_path, """
[features]
plugins = ["tests.no_such_plugin"]
[[features.collections]]
features = ["animal_estimate", "plugin_only_feature"]
""")
    assert error.key == "features.collections[0].features"
    assert "tests.no_such_plugin" in error.problem


@pytest.mark.parametrize(("text", "key"), [
    ('[[features.collections]]\nname = "no features"\n', "features.collections[0].features"),
    ("[[features.collections]]\nfeatures = []\n", "features.collections[0].features"),
    ('[[features.collections]]\nfeatures = ["trend", "trend"]\n',
     "features.collections[0].features"),
    ("[[features.collections]]\nfeatures = [1, 2]\n", "features.collections[0].features"),
    ('[[features.collections]]\nfeatures = ["trend"]\nname = 3\n', "features.collections[0].name"),
    ('[[features.collections]]\nfeatures = ["trend"]\ncolour = "red"\n',
     "features.collections[0].colour"),
    ('[features]\ncollections = ["trend"]\n', "features.collections"),
    ('[[features.collections]]\nfeatures = ["trend", "zebra_share"]\n'
     '[[features.collections]]\nfeatures = ["zebra_share", "trend"]\n',
     "features.collections[1].features"),
])
def test_a_malformed_collection_is_refused_with_its_key(tmp_path: Path, text: str,
                                                        key: str) -> None:
    assert refused(tmp_path, text).key == key


def test_collections_from_the_environment_are_refused_with_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"RML_FEATURES_COLLECTIONS": "trend,zebra_share"})
    assert caught.value.key == "features.collections"


# --- registration ----------------------------------------------------------------------------


def register(store: SQLiteFeatureStore, specs: tuple[ConfiguredCollection, ...],
             now_ms: int) -> tuple[FeatureCollection, ...]:
    """What the feature generator and the learner do at start (the built-in collections
    first; plugins' are process-global, and another test here imports one)."""
    for collection in default_collections(0):
        store.register_collection(collection)
    found, problems = register_configured_collections(specs, store.collections,
                                                      store.register_collection, now_ms)
    assert problems == {}
    return found


def test_a_configured_collection_gets_the_next_id_and_becomes_the_newest(
        tmp_path: Path) -> None:
    store = SQLiteFeatureStore(tmp_path / FEATURES_FILE)
    try:
        (trend,) = register(store, (ConfiguredCollection(TREND, "trend"),), 5_000)
        assert (trend.id, trend.features, trend.created_at) == (2, TREND, 5_000)
        assert [c.id for c in store.collections()] == [0, 1, 2]
        assert valid_collection(store.collections(), ()) == trend
        # An invalid feature in it (and in collection 1, which has every built-in): the
        # learner falls back to the original features.
        assert valid_collection(store.collections(), {"trend"}).id == 0
    finally:
        store.close()


def test_the_same_set_keeps_its_collection_across_restarts_and_older_ones_stay(
        tmp_path: Path) -> None:
    path = tmp_path / FEATURES_FILE
    first = SQLiteFeatureStore(path)
    (trend,) = register(first, (ConfiguredCollection(TREND, "trend"),), 5_000)
    first.close()

    # Restarted, with the same collection (its features in another order, another name)
    # and a new one after it.
    again = SQLiteFeatureStore(path)
    try:
        shuffled = ConfiguredCollection(tuple(reversed(TREND)), "renamed")
        hours = ConfiguredCollection(("reading_count", "hour_sin", "hour_cos"))
        same, new = register(again, (shuffled, hours), 9_000)
        assert same == trend
        assert (new.id, new.created_at) == (3, 9_000)
        assert [c.id for c in again.collections()] == [0, 1, 2, 3]
        assert valid_collection(again.collections(), ()) == new
        # Dropped from the configuration, a collection stays for fallback.
        register(again, (), 12_000)
        assert [c.id for c in again.collections()] == [0, 1, 2, 3]
        assert valid_collection(again.collections(), {"hour_sin"}) == trend
    finally:
        again.close()


def test_a_collection_with_an_unregistered_feature_is_reported_not_registered(
        tmp_path: Path) -> None:
    store = SQLiteFeatureStore(tmp_path / FEATURES_FILE)
    try:
        found, problems = register_configured_collections(
            (ConfiguredCollection(("animal_estimate", "gone_plugin_feature"), "old"),),
            store.collections, store.register_collection, 1_000)
        assert found == ()
        assert problems == {"features.collections[0] (old)":
                            "unknown feature types gone_plugin_feature"}
        assert store.collections() == ()
    finally:
        store.close()


def _register_in_a_process(path: str, now_ms: int, queue: Any) -> None:
    store = SQLiteFeatureStore(Path(path))
    try:
        specs = (ConfiguredCollection(TREND), ConfiguredCollection(ORIGINAL_FEATURES[:2]))
        found, problems = register_configured_collections(specs, store.collections,
                                                          store.register_collection, now_ms)
        queue.put((tuple(c.id for c in found), problems))
    finally:
        store.close()


def test_processes_registering_at_once_agree_on_the_ids(tmp_path: Path) -> None:
    path = tmp_path / FEATURES_FILE
    seed = SQLiteFeatureStore(path)
    for collection in default_collections(0):
        seed.register_collection(collection)
    seed.close()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_register_in_a_process, args=(str(path), 1_000 + i, queue))
               for i in range(4)]
    for worker in workers:
        worker.start()
    answers = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(60)
    assert answers == [((2, 3), {})] * 4
    store = SQLiteFeatureStore(path)
    try:
        assert [c.id for c in store.collections()] == [0, 1, 2, 3]
    finally:
        store.close()


# --- end to end ------------------------------------------------------------------------------


SAVANNA = Savanna(seed=5, n_locations=12, hours=72, end_ms=last_midnight_ms())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    sections = {"features": {"collections": [{"name": "trend", "features": list(TREND)}]}}
    with running_daemon(tmp_path_factory.mktemp("configured"), sections,
                        min_outcomes=200) as d:
        yield d


@pytest.mark.e2e
def test_a_configured_collection_gets_an_id_and_a_model_is_trained_on_it(
        daemon: RunningDaemon, ingest: HttpClient) -> None:
    view = daemon.status()["feature_collection"]
    by_id = {c["id"]: c for c in view["collections"]}
    assert sorted(by_id) == [0, 1, 2] and by_id[2]["features"] == list(TREND)
    assert view["active"] == 2

    readings = [reading_item(r) for r in SAVANNA.readings()]
    assert send_items(ingest, "readings", readings, batch_size=2000).accepted == len(readings)
    outcomes = SAVANNA.outcome_items()
    assert send_items(ingest, "outcomes", outcomes, batch_size=5000).accepted == len(outcomes)

    def champion() -> Any:
        with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
            return stores.registry.champion()

    record = wait_for("a champion", champion, 60.0, 0.2)
    assert record.feature_collection_id == 2
    assert json.loads(record.lineage)["feature_collection"]["features"] == list(TREND)
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        assert len(stores.features.latest_rows(2)) == 12  # online rows for predictions too
