"""Typed, validated settings: embedded defaults, then a TOML file, then ``RML_*`` environment.

Every key has a default. An invalid value is refused with its dotted key named.
Environment names are the dotted key upper-cased with ``_`` for ``.``:
``RML_INGEST_PORT``, ``RML_ACTOR_SYSTEM_ADMIN_PORT``, ``RML_DATA_DIR``;
token lists are comma-separated (``RML_INGEST_TOKENS=a,b``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from config.errors import ConfigError
from config.supervision import (
    SUPERVISORS,
    SupervisionSettings,
    SupervisorPolicy,
    policy_table,
    validate_supervision,
)

__all__ = [
    "ActorSystemSettings",
    "CLUSTER_ROLES",
    "COUCHBASE_DURABILITY",
    "ClusterSettings",
    "ConfiguredCollection",
    "CouchbaseSettings",
    "IngestSettings",
    "FeatureSettings",
    "LearningSettings",
    "MetricsSettings",
    "MqttSettings",
    "PredictSettings",
    "Settings",
    "StorageSettings",
    "SupervisionSettings",
    "SupervisorPolicy",
    "load_settings",
]

DEMO_TOKEN = "rml-demo-token"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class ActorSystemSettings:
    """Where Thespian listens. Its transport is unauthenticated pickle: loopback only."""

    admin_port: int = field(default=19471, metadata={
        "doc": "Thespian's admin port: the actor system's address on this host (a fixed port, "
               "never 0)"})
    bind: str = field(default="127.0.0.1", metadata={
        "doc": "Thespian's bind address; anything but loopback is refused unless "
               "`allow_non_loopback = true`"})
    allow_non_loopback: bool = field(default=False, metadata={
        "doc": "allow a non-loopback `bind`, and joining a leader beyond loopback: Thespian's "
               "transport is unauthenticated pickle, so only on a network that only the nodes "
               "reach ([security](security.md))"})
    start_timeout_s: float = field(default=60.0, metadata={
        "doc": "how long `rml start` waits for every actor to answer"})


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """The collectors' HTTP edge."""

    host: str = field(default="127.0.0.1", metadata={
        "doc": "the collectors' HTTP address (`POST /readings`, `POST /outcomes`)"})
    port: int = field(default=8471, metadata={"doc": "the collectors' HTTP port"})
    tokens: tuple[str, ...] = field(default=(DEMO_TOKEN,), metadata={
        "doc": "accepted bearer tokens (at least one, each at least 8 characters); the "
               "embedded default is the demo's: set your own"})
    collectors: int = field(default=2, metadata={
        "doc": "collector replicas sharing the port (1..32; on a cluster, this node's own)"})
    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata={
        "doc": "body limit, past which a request is a 413; at least 2 MiB (a batch of 10,000 "
               "readings is ~1.6 MB of JSON)"})
    max_pending: int = field(default=32, metadata={
        "doc": "batches queued for a collector's commit before it answers 503 with "
               "`Retry-After`"})
    # The edge's memory bound: connections, and request bodies held at once (then 503s).
    max_connections: int = field(default=1024, metadata={
        "doc": "each collector's memory bound, connections: past it, 503 with `Retry-After`"})
    max_buffered_bytes: int = field(default=128 * 1024 * 1024, metadata={
        "doc": "each collector's memory bound, request bodies held at once (arriving, queued, "
               "running): past it, 503 with `Retry-After`; at least `max_body_bytes`"})
    idle_timeout_s: float = field(default=30.0, metadata={
        "doc": "how long an idle keep-alive connection stays open"})
    max_future_ms: int = field(default=300_000, metadata={
        "doc": "how far in the future a timestamp may be (a later one is `future_timestamp`)"})
    hint_interval_s: float = field(default=0.25, metadata={
        "doc": "at most one `FactsRecorded` hint per interval per collector"})


@dataclass(frozen=True, slots=True)
class PredictSettings:
    """The predictors' HTTP edge."""

    host: str = field(default="127.0.0.1", metadata={
        "doc": "the predictors' HTTP address (`POST /model`, `GET /metrics`)"})
    port: int = field(default=8472, metadata={"doc": "the predictors' HTTP port"})
    tokens: tuple[str, ...] = field(default=(DEMO_TOKEN,), metadata={
        "doc": "accepted bearer tokens (at least one, each at least 8 characters), also for "
               "the `[metrics]` port"})
    replicas: int = field(default=2, metadata={
        "doc": "predictor replicas sharing the port (1..32; on a cluster, this node's own)"})
    max_body_bytes: int = field(default=64 * 1024, metadata={
        "doc": "body limit, past which a request is a 413"})
    max_pending: int = field(default=256, metadata={
        "doc": "requests queued for a predictor's worker thread (`GET /metrics`; `POST /model` "
               "is answered in the edge) before 503 with `Retry-After`"})
    max_connections: int = field(default=4096, metadata={
        "doc": "each predictor's memory bound, connections: past it, 503 with `Retry-After`"})
    max_buffered_bytes: int = field(default=16 * 1024 * 1024, metadata={
        "doc": "each predictor's memory bound, request bodies held at once: past it, 503 with "
               "`Retry-After`; at least `max_body_bytes`"})
    idle_timeout_s: float = field(default=30.0, metadata={
        "doc": "how long an idle keep-alive connection stays open"})
    refresh_interval_s: float = field(default=2.0, metadata={
        "doc": "how often a predictor re-reads the champion (in case a hint was lost)"})
    deadline_ms: float = field(default=250.0, metadata={  # a request may ask for its own
        "doc": "each prediction's deadline; a body may set its own `\"deadline_ms\"` "
               "(0 < d <= 60000); past it the fallback model answers"})
    # How far behind the feature generator's writes a ``location_id`` answer's row may be:
    # predictors hold the rows in memory, pushed by the generator; past this without a push
    # they read the store again (``learning.serving.row_table``).
    row_freshness_s: float = field(default=1.0, metadata={
        "doc": "the freshness bound of `{\"location_id\"}` answers (0.05..3600 s): predictors "
               "hold each location's latest feature row in memory, pushed by the feature "
               "generator as it writes them; a row is used only while the generator has "
               "confirmed the table within this many seconds (else the store is read, as the "
               "truth). On more than one host, keep the clocks in sync (NTP) to well within it"})


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The node's Prometheus view (``GET /metrics``) on a port of its own, with the
    predictors' tokens (``[predict] tokens``)."""

    host: str = field(default="127.0.0.1", metadata={
        "doc": "the address of the node's Prometheus view ([metrics](metrics.md))"})
    port: int = field(default=8473, metadata={
        "doc": "its port: `GET /metrics` with a `[predict] tokens` bearer token (0: none; "
               "the predictors' `GET /metrics` still answers)"})


@dataclass(frozen=True, slots=True)
class LearningSettings:
    """When and how the learner trains, and the publish gate."""

    min_outcomes: int = field(default=500, metadata={
        "doc": "outcomes needed before the first training (at least 10)"})
    retrain_every_outcomes: int = field(default=1000, metadata={
        "doc": "new outcomes that trigger the next training"})
    check_interval_s: float = field(default=1.0, metadata={
        "doc": "how often the learner checks whether to train"})
    feature_window_ms: int = field(default=6 * 3600 * 1000, metadata={
        "doc": "trailing window of the features (at least a minute)"})
    publish_margin: float = field(default=0.0, metadata={
        "doc": "how much a challenger's holdout ROC AUC must beat the champion's by "
               "(0 <= m < 0.5)"})
    model_type: str = field(default="decision_tree", metadata={
        "doc": "`decision_tree`, `random_forest`, `logistic_regression`, "
               "`gradient_boosting`"})
    seed: int = field(default=7, metadata={"doc": "the train/holdout split's seed"})
    # Retraining on a schedule (0: off), and on drift: every ``drift_check_interval_s``
    # (0: off) the PSI of each feature over the last ``drift_window_ms`` of data against
    # the champion's training profile; above ``drift_threshold`` it retrains (once per
    # drift episode). The window should span a day: hour-of-day features need it.
    retrain_interval_s: float = field(default=0.0, metadata={
        "doc": "retrain on this schedule too (0: off; only with new outcomes)"})
    drift_check_interval_s: float = field(default=60.0, metadata={
        "doc": "how often the learner computes drift (0: off)"})
    drift_window_ms: int = field(default=24 * 3600 * 1000, metadata={
        "doc": "the recent data drift is measured on (1 h .. 90 days)"})
    drift_threshold: float = field(default=0.25, metadata={
        "doc": "a feature's PSI above this is drift: retrain once per episode "
               "([learning](learning.md#retraining-triggers-and-drift))"})
    # A candidate that passes the gate first serves in shadow (answers computed and logged,
    # not returned) for this many requests before its promotion; 0 promotes at once.
    shadow_requests: int = field(default=0, metadata={
        "doc": "requests a candidate that passed the gate serves in shadow before its "
               "promotion (0: at once)"})
    # A shadow asked ``shadow_requests`` times or more is rejected when more than this share
    # of its predictions failed (1: never), so one that cannot answer does not wait for ever.
    shadow_max_error_rate: float = field(default=0.1, metadata={
        "doc": "a shadow asked `shadow_requests` times or more is rejected when more than this "
               "share of its predictions failed (1: never)"})
    # Fitting may be handed to an external trainer service (``learning.training.trainer_service``):
    # "local" fits in the learner; an http(s) URL ships the training rows there and waits at
    # most ``trainer_timeout_s`` (inside one handler: below the batch heartbeat timeout).
    trainer: str = field(default="local", metadata={
        "doc": "where the fit runs: `local` (in the learner), or an external trainer's "
               "http(s) URL (`learning.training.trainer_service`, "
               "[learning](learning.md#external-trainer-hybrid-learning))"})
    trainer_token: str = field(default="", metadata={
        "doc": "the external trainer's bearer token (at least 8 characters when `trainer` "
               "is a URL)"})
    trainer_timeout_s: float = field(default=60.0, metadata={
        "doc": "how long the learner waits for the external trainer (below the learning "
               "supervisor's `batch_heartbeat_timeout_s`)"})


@dataclass(frozen=True, slots=True)
class FeatureSettings:
    """Extra feature types (plugin modules) and when a crashing feature is declared invalid."""

    plugins: tuple[str, ...] = field(default=(), metadata={  # module names
        "doc": "modules imported by the feature generator and the learner at start; each "
               "registers feature types and declares collections "
               "(`learning.features.register_feature_type`, `declare_collection`)"})
    max_crashes: int = field(default=3, metadata={
        "doc": "crashes in a row before a feature is marked invalid"})
    nan_rate_rows: int = field(default=100, metadata={
        "doc": "rows a feature's NaN rate is judged over, at least: its latest batches' "
               "(a smaller batch waits for the next; 1: each batch alone)"})
    # ``[[features.collections]]``: collections declared in configuration, oldest first.
    collections: tuple[ConfiguredCollection, ...] = field(default=(), metadata={
        "doc": "collections declared in configuration, oldest first: an array of tables "
               "([learning](learning.md#feature-collections-in-configuration))"})


#: The lowest id a configured collection may fix: 0 and 1 are the built-in collections
#: (``learning.features.default_collections``).
_FIRST_CONFIGURABLE_ID = 2


@dataclass(frozen=True, slots=True)
class ConfiguredCollection:
    """A ``[[features.collections]]`` table: registered feature types by name, an optional
    name for people (in the logs), and an optional fixed ``id``. Without an id, the
    collection's identity is its set of features and it is numbered when first registered."""

    features: tuple[str, ...] = field(metadata={
        "doc": "registered feature types (built-in or a plugin's), each once"})
    name: str = field(default="", metadata={
        "doc": "a name for people, shown in the logs beside the collection's id"})
    id: int | None = field(default=None, metadata={
        "doc": "a fixed id (2 or more); without one, the collection is numbered when its set "
               "of features is first registered"})


#: ``[storage.couchbase] durability``: the SDK's server-side durability levels.
COUCHBASE_DURABILITY = ("none", "majority", "majority_and_persist_active", "persist_to_majority")
_COUCHBASE_NAME = re.compile(r"[A-Za-z0-9_%-][A-Za-z0-9_%.-]{0,250}")


@dataclass(frozen=True, slots=True)
class CouchbaseSettings:
    """``[storage.couchbase]``: the cluster, and where in it this deployment lives. The
    password is best given as ``RML_STORAGE_COUCHBASE_PASSWORD``, not in the file."""

    connection_string: str = field(default="couchbase://127.0.0.1", metadata={
        "doc": "the cluster: `couchbase://host[,host...]` or `couchbases://...`"})
    username: str = field(default="rml", metadata={"doc": "the cluster user"})
    password: str = field(default="", repr=False, metadata={
        "doc": "its password: best given in the environment (`rml start` warns when it is "
               "in the file)"})
    bucket: str = field(default="rml", metadata={
        "doc": "the bucket (it must exist; the project creates only its scope and "
               "collections)"})
    scope: str = field(default="rml", metadata={  # the project creates its collections
        "doc": "the scope: one per deployment"})
    durability: str = field(default="majority", metadata={
        "doc": "`none`, `majority`, `majority_and_persist_active`, `persist_to_majority`: "
               "a batch is acknowledged once durable at this level"})
    bootstrap_timeout_s: float = field(default=10.0, metadata={
        "doc": "how long connecting may take before a clear error (at most 300)"})
    kv_timeout_s: float = field(default=2.5, metadata={
        "doc": "each key-value call's timeout (at most 60)"})


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The store backend (SQLite files in ``data_dir`` by default)."""

    backend: str = field(default="sqlite", metadata={
        "doc": "`sqlite` (files in `data_dir`) or `couchbase`"})
    busy_timeout_s: float = field(default=10.0, metadata={
        "doc": "SQLite's busy timeout: how long a writer waits for a file's lock"})
    couchbase: CouchbaseSettings = field(default_factory=CouchbaseSettings, metadata={
        "doc": "the Couchbase backend, every store on the Data service alone; "
               "`rml migrate --to couchbase` copies a data directory there "
               "([Couchbase](couchbase.md))"})


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """``[mqtt]``: collectors also take readings and outcomes from an MQTT broker (QoS 1, a
    shared subscription so replicas split the load, acknowledged only once committed).
    Off while ``url`` is empty. The password is best given as ``RML_MQTT_PASSWORD``."""

    url: str = field(default="", metadata={
        "doc": "the broker: `mqtt://host:1883` or `mqtts://host:8883` (TLS); empty: no MQTT"})
    username: str = field(default="", metadata={"doc": "the broker user"})
    password: str = field(default="", repr=False, metadata={
        "doc": "its password: best given in the environment, not in the file"})
    readings_topic: str = field(default="rml/readings/+", metadata={
        "doc": "the topic filter readings arrive on (its last level names the gateway)"})
    outcomes_topic: str = field(default="rml/outcomes/+", metadata={
        "doc": "the topic filter outcomes arrive on"})
    share_group: str = field(default="rml", metadata={  # one copy of each message per group
        "doc": "the shared subscription's group: `$share/<group>/<topic>`"})
    client_id_prefix: str = field(default="rml", metadata={  # stable across restarts
        "doc": "client ids are `<prefix>-<collector slot>`; two deployments sharing a "
               "broker need different ones"})
    session_expiry_s: int = field(default=86_400, metadata={
        "doc": "how long the broker keeps a gone collector's session"})
    keepalive_s: int = field(default=30, metadata={"doc": "MQTT keepalive (5..65535 s)"})
    reconnect_min_s: float = field(default=0.5, metadata={
        "doc": "the shortest wait between attempts to reach the broker"})
    reconnect_max_s: float = field(default=30.0, metadata={
        "doc": "the longest wait between attempts to reach the broker"})
    ca_file: str = field(default="", metadata={
        "doc": "for `mqtts`: a CA bundle instead of the system's"})

    def address(self) -> tuple[str, int, bool]:
        """(host, port, tls) from ``url``."""
        url = urlsplit(self.url)
        tls = url.scheme == "mqtts"
        return url.hostname or "", url.port or (8883 if tls else 1883), tls


#: What a node may host (``[cluster] roles``): collectors, predictors, and the learning
#: subtree's single workers (learner, feature generator, publisher), which run on the leader.
CLUSTER_ROLES = ("collector", "predictor", "learning")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """``[cluster]``: this node's place among several hosts sharing one actor system.

    Without ``join`` the node leads (the root supervisor and the learning subtree run
    here); with ``join = "host:port"`` (the leader's admin address) it is a member that
    hosts collectors and predictors placed on it by the leader. How many of each a node
    hosts is its own ``[ingest] collectors`` and ``[predict] replicas``.
    """

    node_name: str = field(default="", metadata={
        "doc": "this node's name (letters, digits, `_ . -`); required on a member; without "
               "one, a single node keeps its run record and logs where they always were"})
    roles: tuple[str, ...] = field(default=CLUSTER_ROLES, metadata={
        "doc": "what the node hosts: `collector`, `predictor`, `learning` (the leader must "
               "have `learning`, a member must not)"})
    join: str = field(default="", metadata={
        "doc": "the leader's admin `host:port`; absent, this node leads "
               "([more than one host](cluster.md))"})

    @property
    def leads(self) -> bool:
        """Whether this node is the leader (it joins no one)."""
        return not self.join

    def join_address(self) -> tuple[str, int] | None:
        """``join`` as (host, port), or None on the leader."""
        if not self.join:
            return None
        host, _, port = self.join.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of a daemon. Frozen: it crosses actor boundaries as is."""

    data_dir: str = field(default="rml-data", metadata={
        "doc": "stores, logs (`logs/rml.log`, JSON lines) and the run record; in a config "
               "file, relative to that file"})
    log_level: str = field(default="info", metadata={
        "doc": "`debug`, `info`, `warning`, `error`"})
    actor_system: ActorSystemSettings = field(default_factory=ActorSystemSettings, metadata={
        "doc": "where Thespian listens: its transport is unauthenticated pickle, so loopback "
               "only by default"})
    ingest: IngestSettings = field(default_factory=IngestSettings, metadata={
        "doc": "the collectors' HTTP edge"})
    predict: PredictSettings = field(default_factory=PredictSettings, metadata={
        "doc": "the predictors' HTTP edge"})
    metrics: MetricsSettings = field(default_factory=MetricsSettings, metadata={
        "doc": "the node's Prometheus view on a port of its own"})
    learning: LearningSettings = field(default_factory=LearningSettings, metadata={
        "doc": "when and how the learner trains, the publish gate, shadows, drift and the "
               "external trainer"})
    features: FeatureSettings = field(default_factory=FeatureSettings, metadata={
        "doc": "feature plugins, configured collections, and when a crashing feature is "
               "declared invalid"})
    supervision: SupervisionSettings = field(default_factory=SupervisionSettings, metadata={
        "doc": "every supervisor's restart policy, liveness and standbys"})
    storage: StorageSettings = field(default_factory=StorageSettings, metadata={
        "doc": "the store backend: SQLite files in `data_dir`, or Couchbase"})
    cluster: ClusterSettings = field(default_factory=ClusterSettings, metadata={
        "doc": "this node's place among several hosts sharing one actor system"})
    mqtt: MqttSettings = field(default_factory=MqttSettings, metadata={
        "doc": "the MQTT ingress: collectors also take readings and outcomes from a broker"})

    @property
    def node_name(self) -> str:
        """This node's name: ``[cluster] node_name``, or ``"local"`` for a single node."""
        return self.cluster.node_name or "local"

    @property
    def data_path(self) -> Path:
        """``data_dir`` as an absolute path."""
        return Path(self.data_dir).expanduser().resolve()

    @property
    def log_dir(self) -> Path:
        """Where the daemon's log files go (one directory per named node: nodes on one
        machine may share a data directory)."""
        logs = self.data_path / "logs"
        return logs / self.cluster.node_name if self.cluster.node_name else logs

    @property
    def run_dir(self) -> Path:
        """Where the daemon records its process group and ports (one per named node)."""
        run = self.data_path / "run"
        return run / self.cluster.node_name if self.cluster.node_name else run


_SECTIONS: dict[str, type] = {
    "actor_system": ActorSystemSettings,
    "ingest": IngestSettings,
    "predict": PredictSettings,
    "metrics": MetricsSettings,
    "learning": LearningSettings,
    "features": FeatureSettings,
    "supervision": SupervisionSettings,
    "storage": StorageSettings,
    "cluster": ClusterSettings,
    "mqtt": MqttSettings,
}
_TOP_LEVEL = {"data_dir": str, "log_level": str}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _coerce(key: str, raw: Any, default: Any, from_env: bool) -> Any:
    """Turn ``raw`` into the type of ``default`` or raise ConfigError naming ``key``."""
    kind = type(default)
    if kind is tuple:
        if from_env and isinstance(raw, str):
            raw = [t.strip() for t in raw.split(",") if t.strip()]
        if not isinstance(raw, list | tuple) or not all(isinstance(t, str) for t in raw):
            raise ConfigError(key, f"expected a list of strings, got {raw!r}")
        return tuple(raw)
    if kind is bool:
        if from_env and isinstance(raw, str):
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
        if not isinstance(raw, bool):
            raise ConfigError(key, f"expected true or false, got {raw!r}")
        return raw
    if kind is int:
        if from_env and isinstance(raw, str):
            try:
                raw = int(raw.strip())
            except ValueError:
                raise ConfigError(key, f"expected an integer, got {raw!r}") from None
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ConfigError(key, f"expected an integer, got {raw!r}")
        return raw
    if kind is float:
        if from_env and isinstance(raw, str):
            try:
                raw = float(raw.strip())
            except ValueError:
                raise ConfigError(key, f"expected a number, got {raw!r}") from None
        if not isinstance(raw, int | float) or isinstance(raw, bool) or raw != raw:
            raise ConfigError(key, f"expected a number, got {raw!r}")
        return float(raw)
    if not isinstance(raw, str):
        raise ConfigError(key, f"expected a string, got {raw!r}")
    return raw


def _apply(section: Any, prefix: str, values: Mapping[str, Any], from_env: bool) -> Any:
    known = {f.name: getattr(section, f.name) for f in fields(section)}
    changes: dict[str, Any] = {}
    for name, raw in values.items():
        key = f"{prefix}.{name}"
        if isinstance(section, SupervisionSettings):
            table, _, inner = name.partition("_") if from_env else (name, "", "")
            if table in SUPERVISORS and (inner or not from_env):
                # [supervision.serving] in a file; RML_SUPERVISION_SERVING_STANDBY from env.
                given = {inner: raw} if from_env else raw
                current = changes.get(table, known[table])
                changes[table] = policy_table(section, f"{prefix}.{table}", current, given,
                                              from_env, _coerce)
                continue
        if key == "features.collections":
            changes[name] = _configured_collections(key, raw)
            continue
        if isinstance(section, StorageSettings) and (name == "couchbase" or (
                from_env and name.startswith("couchbase_"))):
            # [storage.couchbase] in a file; RML_STORAGE_COUCHBASE_PASSWORD from env.
            nested: Any = {name.removeprefix("couchbase_"): raw} if from_env else raw
            if not isinstance(nested, Mapping):
                raise ConfigError(key, "expected a table")
            current = changes.get("couchbase", section.couchbase)
            changes["couchbase"] = _apply(current, f"{prefix}.couchbase", nested, from_env)
            continue
        if name not in known:
            raise ConfigError(key, "unknown key")
        changes[name] = _coerce(key, raw, known[name], from_env)
    return replace(section, **changes)


def _configured_collections(key: str, raw: Any) -> tuple[ConfiguredCollection, ...]:
    """``[[features.collections]]``: an array of tables, each ``features`` (a non-empty list
    of distinct names), an optional ``name`` and an optional ``id``; errors name
    ``features.collections[i].x``."""
    if not isinstance(raw, list | tuple) or not all(isinstance(t, Mapping) for t in raw):
        raise ConfigError(key, "expected an array of tables ([[features.collections]])")
    out: list[ConfiguredCollection] = []
    for i, table in enumerate(raw):
        here = f"{key}[{i}]"
        for name in table:
            if name not in ("name", "features", "id"):
                raise ConfigError(f"{here}.{name}", "unknown key")
        if "features" not in table:
            raise ConfigError(f"{here}.features", "missing: the feature types to collect")
        features = _coerce(f"{here}.features", table["features"], (), False)
        if not features or len(set(features)) != len(features):
            raise ConfigError(f"{here}.features", "must name at least one feature, each once")
        if not all(feature.isidentifier() for feature in features):
            raise ConfigError(f"{here}.features", "feature type names are identifiers")
        label = _coerce(f"{here}.name", table.get("name", ""), "", False)
        fixed = None if "id" not in table else _coerce(f"{here}.id", table["id"], 0, False)
        if fixed is not None and fixed < _FIRST_CONFIGURABLE_ID:
            raise ConfigError(f"{here}.id", f"must be at least {_FIRST_CONFIGURABLE_ID} "
                              "(0 and 1 are the built-in collections)")
        out.append(ConfiguredCollection(features, label, fixed))
    return tuple(out)


def _from_mapping(base: Settings, data: Mapping[str, Any], from_env: bool) -> Settings:
    changes: dict[str, Any] = {}
    for name, value in data.items():
        if name in _TOP_LEVEL:
            changes[name] = _coerce(name, value, getattr(base, name), from_env)
        elif name in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(name, "expected a table")
            changes[name] = _apply(getattr(base, name), name, value, from_env)
        else:
            raise ConfigError(name, "unknown key")
    return replace(base, **changes)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Map ``RML_SECTION_KEY`` variables onto the nested settings shape."""
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("RML_") or name in {"RML_CONFIG"}:
            continue
        rest = name[4:].lower()
        if rest in _TOP_LEVEL:
            out[rest] = value
            continue
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                # An unknown key of a known section is a typo: refuse it, named.
                out.setdefault(section, {})[key] = value
                break
        # Other RML_* variables (e.g. RML_COUCHBASE_URL) belong to other parts.
    return out


def _validate(s: Settings) -> Settings:
    def port(key: str, value: int) -> None:
        if not 0 <= value <= 65535:
            raise ConfigError(key, f"port must be in 0..65535, got {value}")

    port("actor_system.admin_port", s.actor_system.admin_port)
    port("ingest.port", s.ingest.port)
    port("predict.port", s.predict.port)
    port("metrics.port", s.metrics.port)
    if s.actor_system.admin_port == 0:
        raise ConfigError("actor_system.admin_port", "must be a fixed port, not 0")
    if s.actor_system.bind not in LOOPBACK and not s.actor_system.allow_non_loopback:
        raise ConfigError(
            "actor_system.bind",
            "Thespian's transport is unauthenticated pickle; binding it beyond loopback "
            "needs actor_system.allow_non_loopback = true",
        )
    if s.log_level not in _LOG_LEVELS:
        raise ConfigError("log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
    replicas = (("ingest.collectors", s.ingest.collectors),
                ("predict.replicas", s.predict.replicas))
    for key, n in replicas:
        if not 1 <= n <= 32:
            raise ConfigError(key, f"must be in 1..32, got {n}")
    for key, tokens in (("ingest.tokens", s.ingest.tokens), ("predict.tokens", s.predict.tokens)):
        if not tokens:
            raise ConfigError(key, "at least one bearer token is required")
        if any(len(t) < 8 for t in tokens):
            raise ConfigError(key, "tokens must be at least 8 characters")
    if s.ingest.max_body_bytes < 2 * 1024 * 1024:
        raise ConfigError("ingest.max_body_bytes",
                          "must take a batch of 10,000 readings (>= 2 MiB)")
    for section in ("ingest", "predict"):
        edge = getattr(s, section)
        if edge.max_connections < 1:
            raise ConfigError(f"{section}.max_connections", "must be at least 1")
        if edge.max_buffered_bytes < edge.max_body_bytes:
            raise ConfigError(f"{section}.max_buffered_bytes",
                              "must be at least max_body_bytes (one whole request)")
    if not 0 < s.predict.deadline_ms <= 60_000:
        raise ConfigError("predict.deadline_ms", "must be in (0, 60000]")
    if not 0.05 <= s.predict.row_freshness_s <= 3600:
        raise ConfigError("predict.row_freshness_s", "must be in [0.05, 3600] seconds")
    if s.features.max_crashes < 1:
        raise ConfigError("features.max_crashes", "must be at least 1")
    if s.features.nan_rate_rows < 1:
        raise ConfigError("features.nan_rate_rows", "must be at least 1")
    for module in s.features.plugins:
        if not all(part.isidentifier() for part in module.split(".")):
            raise ConfigError("features.plugins", f"{module!r} is not a module name")
    _validate_trainer(s)
    _validate_collections(s.features)
    if s.learning.min_outcomes < 10:
        raise ConfigError("learning.min_outcomes", "must be at least 10")
    if s.learning.retrain_every_outcomes < 1:
        raise ConfigError("learning.retrain_every_outcomes", "must be at least 1")
    if s.learning.feature_window_ms < 60_000:
        raise ConfigError("learning.feature_window_ms", "must be at least one minute")
    if not 0.0 <= s.learning.publish_margin < 0.5:
        raise ConfigError("learning.publish_margin", "must be in [0, 0.5)")
    for key, seconds in (("learning.retrain_interval_s", s.learning.retrain_interval_s),
                         ("learning.drift_check_interval_s", s.learning.drift_check_interval_s)):
        if not 0 <= seconds <= 365 * 86_400:
            raise ConfigError(key, "must be in [0, 31536000] seconds (0: off)")
    if not 3_600_000 <= s.learning.drift_window_ms <= 90 * 86_400_000:
        raise ConfigError("learning.drift_window_ms", "must be between one hour and 90 days")
    if not 0 < s.learning.drift_threshold <= 100:
        raise ConfigError("learning.drift_threshold", "must be in (0, 100]")
    if not 0 <= s.learning.shadow_requests <= 100_000_000:
        raise ConfigError("learning.shadow_requests", "must be in 0..100000000 (0: no shadow)")
    if not 0.0 <= s.learning.shadow_max_error_rate <= 1.0:
        raise ConfigError("learning.shadow_max_error_rate", "must be in [0, 1] (1: never reject)")
    validate_supervision(s.supervision)
    _validate_storage(s.storage)
    _validate_cluster(s)
    _validate_mqtt(s.mqtt)
    from config.job import ModelType  # local: config.job is the learning side's

    try:
        ModelType(s.learning.model_type)
    except ValueError:
        choices = ", ".join(m.value for m in ModelType)
        raise ConfigError("learning.model_type", f"must be one of {choices}") from None
    return s


def _validate_storage(storage: StorageSettings) -> None:
    if storage.backend not in {"sqlite", "couchbase"}:
        raise ConfigError("storage.backend", "must be 'sqlite' or 'couchbase'")
    cb, key = storage.couchbase, "storage.couchbase"
    url = urlsplit(cb.connection_string)
    if url.scheme not in ("couchbase", "couchbases") or not url.netloc:
        raise ConfigError(f"{key}.connection_string",
                          "must be couchbase://host[,host...] or couchbases://..., "
                          f"got {cb.connection_string!r}")
    for name in ("bucket", "scope"):
        if not _COUCHBASE_NAME.fullmatch(getattr(cb, name)):
            raise ConfigError(f"{key}.{name}", "must be 1 to 251 letters, digits, _ - % "
                              "or . (not starting with .)")
    if cb.scope.startswith("_") and cb.scope != "_default":
        raise ConfigError(f"{key}.scope", "names starting with _ are Couchbase's own")
    if cb.durability not in COUCHBASE_DURABILITY:
        raise ConfigError(f"{key}.durability",
                          f"must be one of {', '.join(COUCHBASE_DURABILITY)}")
    for name, most in (("bootstrap_timeout_s", 300.0), ("kv_timeout_s", 60.0)):
        if not 0 < getattr(cb, name) <= most:
            raise ConfigError(f"{key}.{name}", f"must be in (0, {most:g}] seconds")


def _validate_mqtt(mqtt: MqttSettings) -> None:
    if not mqtt.url:
        return
    url = urlsplit(mqtt.url)
    try:
        port = url.port
    except ValueError:
        port = -1
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname or port == -1 or url.path \
            not in ("", "/"):
        raise ConfigError("mqtt.url", "must be mqtt://host[:port] or mqtts://host[:port], "
                          f"got {mqtt.url!r}")
    for key in ("readings_topic", "outcomes_topic"):
        topic = getattr(mqtt, key)
        levels = topic.split("/")
        if (not topic or len(topic) > 200 or any(("+" in level or "#" in level)
                                                 and level not in ("+", "#") for level in levels)
                or "#" in levels[:-1] or topic.startswith("$")):
            raise ConfigError(f"mqtt.{key}", "must be an MQTT topic filter (+ and # as whole "
                              f"levels, # last), got {topic!r}")
    if mqtt.readings_topic == mqtt.outcomes_topic:
        raise ConfigError("mqtt.outcomes_topic", "must differ from mqtt.readings_topic")
    if not _NODE_NAME.fullmatch(mqtt.share_group):
        raise ConfigError("mqtt.share_group", "must be 1 to 40 letters, digits, _ . or -")
    if not _NODE_NAME.fullmatch(mqtt.client_id_prefix):
        raise ConfigError("mqtt.client_id_prefix", "must be 1 to 40 letters, digits, _ . or -")
    if not 0 <= mqtt.session_expiry_s <= 2**32 - 1:
        raise ConfigError("mqtt.session_expiry_s", "must be in 0..4294967295 seconds")
    if not 5 <= mqtt.keepalive_s <= 65535:
        raise ConfigError("mqtt.keepalive_s", "must be in 5..65535 seconds")
    if not 0 < mqtt.reconnect_min_s <= mqtt.reconnect_max_s:
        raise ConfigError("mqtt.reconnect_min_s", "must be above 0 and at most reconnect_max_s")
    if mqtt.password and not mqtt.username:
        raise ConfigError("mqtt.username", "a password needs a username")


def _validate_cluster(s: Settings) -> None:
    cluster = s.cluster
    if cluster.node_name and not _NODE_NAME.fullmatch(cluster.node_name):
        raise ConfigError("cluster.node_name", "must be 1 to 40 letters, digits, _ . or - "
                          "(starting with a letter or digit)")
    unknown = [r for r in cluster.roles if r not in CLUSTER_ROLES]
    if unknown or not cluster.roles or len(set(cluster.roles)) != len(cluster.roles):
        raise ConfigError("cluster.roles", f"a non-empty list of distinct roles among "
                          f"{', '.join(CLUSTER_ROLES)}, got {list(cluster.roles)}")
    if not cluster.join:
        if "learning" not in cluster.roles:
            raise ConfigError("cluster.roles", "the leader (a node without join) runs the "
                              "learning subtree: its roles must include \"learning\"")
        return
    if "learning" in cluster.roles:
        raise ConfigError("cluster.roles", "the learning subtree runs on the leader only: "
                          "a node that joins hosts \"collector\" and \"predictor\"")
    if not cluster.node_name:
        raise ConfigError("cluster.node_name", "a node that joins needs a name of its own")
    host, sep, port = cluster.join.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError("cluster.join", f'must be "host:port" (the leader\'s admin address), '
                          f"got {cluster.join!r}")
    host = host.strip("[]")
    if host not in LOOPBACK and not s.actor_system.allow_non_loopback:
        raise ConfigError(
            "cluster.join",
            "Thespian's transport is unauthenticated pickle: joining a leader beyond loopback "
            "needs actor_system.allow_non_loopback = true on every node, on a network only "
            "the nodes reach (docs/cluster.md)")
    if host not in LOOPBACK and s.actor_system.bind in LOOPBACK:
        raise ConfigError("actor_system.bind", "a node that joins a leader on another host "
                          "binds an address that host reaches, not loopback")
    if (host in LOOPBACK and s.actor_system.bind in LOOPBACK
            and int(port) == s.actor_system.admin_port):
        raise ConfigError("cluster.join", "is this node's own admin address: a member needs "
                          "an admin_port of its own")


def _validate_trainer(s: Settings) -> None:
    learning = s.learning
    if learning.trainer != "local":
        url = urlsplit(learning.trainer)
        if (url.scheme not in ("http", "https") or not url.hostname or url.query
                or url.fragment):
            raise ConfigError("learning.trainer",
                              'must be "local" or an http(s) URL such as '
                              f"http://127.0.0.1:8480, got {learning.trainer!r}")
        if len(learning.trainer_token) < 8:
            raise ConfigError("learning.trainer_token",
                              "an external trainer needs a bearer token of at least 8 characters")
    limit = s.supervision.policy("learning").batch_heartbeat_timeout_s
    if not 0 < learning.trainer_timeout_s < limit:
        raise ConfigError("learning.trainer_timeout_s",
                          f"must be above 0 and below the learning supervisor's "
                          f"batch_heartbeat_timeout_s "
                          f"({limit:g} s): the learner waits for the trainer inside one handler")


def _validate_collections(features: FeatureSettings) -> None:
    """No two configured collections name the same set of features or the same id.

    Whether each feature type exists is checked where the feature generator and the
    learner register the collections (``learning.features``), not here: knowing the feature
    types means importing numpy and the plugins, too much for every ``rml status``."""
    seen: dict[frozenset[str], int] = {}
    ids: dict[int, int] = {}
    for i, collection in enumerate(features.collections):
        same = seen.setdefault(frozenset(collection.features), i)
        if same != i:
            raise ConfigError(f"features.collections[{i}].features",
                              f"the same features as features.collections[{same}]")
        if collection.id is not None and ids.setdefault(collection.id, i) != i:
            raise ConfigError(f"features.collections[{i}].id",
                              f"the same id as features.collections[{ids[collection.id]}]")


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then the TOML file at ``path`` (or ``$RML_CONFIG``), then ``RML_*`` variables."""
    env = os.environ if environ is None else environ
    settings = Settings()
    if path is None and env.get("RML_CONFIG"):
        path = env["RML_CONFIG"]
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config", f"file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not UTF-8
            raise ConfigError("config", f"cannot read {path}: {exc}") from None
        settings = _from_mapping(settings, data, from_env=False)
        if "data_dir" in data:
            # A relative data_dir in a file is relative to that file ("~" is the user's home).
            data_dir = Path(path).parent / Path(settings.data_dir).expanduser()
            settings = replace(settings, data_dir=str(data_dir.resolve()))
    settings = _from_mapping(settings, _env_overrides(env), from_env=True)
    return _validate(replace(settings, data_dir=str(settings.data_path)))
