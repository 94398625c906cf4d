"""Feature collections declared in configuration (``[[features.collections]]``).

Loading: the tables' shape (features, optional name and id), refused with
``features.collections[i].x`` named, without importing numpy or any plugin. Registration:
a feature type that is neither built in nor a plugin's is reported naming
``features.collections[i]``; a new set of features gets the next id, the same set keeps its
collection across restarts and concurrent registrations, older collections stay; a fixed id
is kept and ranks with the plugins' collections. End to end: a daemon configured with a
collection registers it, makes it active and trains its model on it.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from config.settings import ConfiguredCollection, load_settings
from learning.features import (
    FIXED_ID_CREATED_AT,
    ORIGINAL_FEATURES,
    default_collections,
    register_configured_collections,
    register_declared_collections,
)
from learning.features.collections import FeatureCollection, valid_collection
from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna, reading_item
from storage import FEATURES_FILE, open_sqlite_stores
from storage.sqlite.features import SQLiteFeatureStore
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
id = 7
""")
    assert settings.features.max_crashes == 4
    assert settings.features.collections == (
        ConfiguredCollection(TREND, "trend"),
        ConfiguredCollection(("reading_count", "hour_sin", "hour_cos"), "", 7),
    )


def test_no_collections_by_default() -> None:
    assert load_settings(None, {}).features.collections == ()


def test_loading_imports_neither_numpy_nor_the_plugins(tmp_path: Path) -> None:
    # rml status and rml stop load the settings too: the feature types are checked where
    # the collections are registered, not at every load.
    config = tmp_path / "rml.toml"
    config.write_text("""
[features]
plugins = ["tests.broken_features"]
[[features.collections]]
features = ["animal_estimate", "broken_range"]
""")
    probe = ("import sys; from config.settings import load_settings; "
             f"s = load_settings({str(config)!r}, {{}}); "
             "print(s.features.collections[0].features, "
             "sorted(m for m in ('numpy', 'learning.features', 'tests.broken_features') "
             "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "('animal_estimate', 'broken_range') []"


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
    ('[[features.collections]]\nfeatures = ["trend", "zebra share"]\n',
     "features.collections[0].features"),
    ('[[features.collections]]\nfeatures = ["trend"]\nid = 1\n', "features.collections[0].id"),
    ('[[features.collections]]\nfeatures = ["trend"]\nid = "7"\n', "features.collections[0].id"),
    ('[[features.collections]]\nfeatures = ["trend"]\nid = 7\n'
     '[[features.collections]]\nfeatures = ["zebra_share"]\nid = 7\n',
     "features.collections[1].id"),
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
    return tuple(found.values())


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


def test_a_feature_type_nobody_registers_is_reported_naming_the_collection(
        tmp_path: Path) -> None:
    # What the actors do at start: the plugins first (this one fails to import), then the
    # configured collections; each problem is logged under its key.
    store = SQLiteFeatureStore(tmp_path / FEATURES_FILE)
    try:
        plugins = register_declared_collections(["tests.no_such_plugin"],
                                                store.register_collection)
        assert list(plugins) == ["plugin tests.no_such_plugin"]
        # Collections other tests' plugins declared in this process are registered too: the
        # configured one takes the next id.
        before = [c.id for c in store.collections()]
        specs = (ConfiguredCollection(("animal_estimate", "trend"), "fine"),
                 ConfiguredCollection(("animal_estimate", "plugin_only_feature"), "old"))
        found, problems = register_configured_collections(
            specs, store.collections, store.register_collection, 1_000)
        assert [(what, c.id) for what, c in found.items()] == [
            ("features.collections[0] (fine)", max(before) + 1)]
        assert problems == {"features.collections[1] (old)":
                            "unknown feature type 'plugin_only_feature': neither built in nor "
                            "registered by a plugin in [features] plugins"}
        assert [c.id for c in store.collections()] == [*before, max(before) + 1]
    finally:
        store.close()


HOURS = ("reading_count", "hour_sin", "hour_cos")


def test_a_fixed_id_is_kept_and_ranks_with_the_plugins_collections_by_id(
        tmp_path: Path) -> None:
    store = SQLiteFeatureStore(tmp_path / FEATURES_FILE)
    try:
        # A plugin's collection 5, as register_declared_collections leaves it.
        plugin = FeatureCollection(5, FIXED_ID_CREATED_AT, ("animal_estimate", "interval_width"))
        store.register_collection(plugin)
        trend, hours = register(store, (ConfiguredCollection(TREND, "trend"),
                                        ConfiguredCollection(HOURS, "hours", id=7)), 9_000)
        assert (hours.id, hours.created_at) == (7, FIXED_ID_CREATED_AT)
        assert (trend.id, trend.created_at) == (8, 9_000)  # after every id, fixed ones too
        assert valid_collection(store.collections(), ()) == trend  # numbered: the newest
        assert valid_collection(store.collections(), {"trend"}) == hours  # 7 above 5
        assert valid_collection(store.collections(), {"trend", "hour_sin"}) == plugin
        # Restarted with the fixed one's features in another order: the same collection.
        assert register(store, (ConfiguredCollection(tuple(reversed(HOURS)), id=7),),
                        12_000) == (hours,)
        assert [c.id for c in store.collections()] == [0, 1, 5, 7, 8]
    finally:
        store.close()


def test_a_fixed_id_taken_by_other_features_is_reported_not_changed(tmp_path: Path) -> None:
    store = SQLiteFeatureStore(tmp_path / FEATURES_FILE)
    try:
        plugin = FeatureCollection(5, FIXED_ID_CREATED_AT, ("animal_estimate", "interval_width"))
        store.register_collection(plugin)
        found, problems = register_configured_collections(
            (ConfiguredCollection(HOURS, "hours", id=5),), store.collections,
            store.register_collection, 1_000)
        assert found == {}
        assert problems == {"features.collections[0] (hours)":
                            "id 5 is already the collection of animal_estimate, interval_width"}
        assert store.collections() == (plugin,)
    finally:
        store.close()


def _register_in_a_process(path: str, now_ms: int, queue: Any) -> None:
    store = SQLiteFeatureStore(Path(path))
    try:
        specs = (ConfiguredCollection(TREND), ConfiguredCollection(ORIGINAL_FEATURES[:2]))
        found, problems = register_configured_collections(specs, store.collections,
                                                          store.register_collection, now_ms)
        queue.put((tuple(c.id for c in found.values()), problems))
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
    try:
        for worker in workers:
            worker.start()
        answers = [queue.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(60)
    finally:  # a worker that hung (no answer, no exit) is ended, not left behind
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                worker.terminate()
                worker.join(10)
    assert answers == [((2, 3), {})] * 4
    assert [worker.exitcode for worker in workers] == [0] * 4
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

    record = wait_for("a champion", daemon.champion, 60.0, 0.2)
    assert record.feature_collection_id == 2
    assert json.loads(record.lineage)["feature_collection"]["features"] == list(TREND)
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        assert len(stores.features.latest_rows(2)) == 12  # online rows for predictions too
