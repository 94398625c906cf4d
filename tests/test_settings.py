"""Settings: defaults, then a TOML file, then ``RML_*`` variables; every refusal names its key."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from config.settings import load_settings

#: Every key and its documented default (``data_dir`` is checked separately: it is resolved).
DEFAULTS: dict[str, Any] = {
    "log_level": "info",
    "actor_system.admin_port": 19471,
    "actor_system.bind": "127.0.0.1",
    "actor_system.allow_non_loopback": False,
    "actor_system.start_timeout_s": 60.0,
    "ingest.host": "127.0.0.1",
    "ingest.port": 8471,
    "ingest.tokens": ("rml-demo-token",),
    "ingest.collectors": 2,
    "ingest.max_body_bytes": 16 * 1024 * 1024,
    "ingest.max_pending": 32,
    "ingest.max_connections": 1024,
    "ingest.max_buffered_bytes": 128 * 1024 * 1024,
    "ingest.idle_timeout_s": 30.0,
    "ingest.max_future_ms": 300_000,
    "ingest.hint_interval_s": 0.25,
    "predict.host": "127.0.0.1",
    "predict.port": 8472,
    "predict.tokens": ("rml-demo-token",),
    "predict.replicas": 2,
    "predict.max_body_bytes": 64 * 1024,
    "predict.max_pending": 256,
    "predict.max_connections": 4096,
    "predict.max_buffered_bytes": 16 * 1024 * 1024,
    "predict.idle_timeout_s": 30.0,
    "predict.refresh_interval_s": 2.0,
    "predict.deadline_ms": 250.0,
    "predict.row_freshness_s": 1.0,
    "metrics.host": "127.0.0.1",
    "metrics.port": 8473,
    "learning.min_outcomes": 500,
    "learning.retrain_every_outcomes": 1000,
    "learning.check_interval_s": 1.0,
    "learning.feature_window_ms": 6 * 3600 * 1000,
    "learning.publish_margin": 0.0,
    "learning.model_type": "decision_tree",
    "learning.seed": 7,
    "learning.retrain_interval_s": 0.0,
    "learning.drift_check_interval_s": 60.0,
    "learning.drift_window_ms": 24 * 3600 * 1000,
    "learning.drift_threshold": 0.25,
    "learning.shadow_requests": 0,
    "learning.shadow_max_error_rate": 0.1,
    "learning.trainer": "local",
    "learning.trainer_token": "",
    "learning.trainer_timeout_s": 60.0,
    "features.plugins": (),
    "features.max_crashes": 3,
    "features.nan_rate_rows": 100,
    "features.collections": (),
    "supervision.strategy": "one_for_one",
    "supervision.max_restarts": 10,
    "supervision.period_s": 30.0,
    "supervision.backoff_min_s": 0.0,
    "supervision.backoff_max_s": 2.0,
    "supervision.backoff_reset_s": 1.0,
    "supervision.heartbeat_interval_s": 0.5,
    "supervision.heartbeat_timeout_s": 3.0,
    "supervision.batch_heartbeat_timeout_s": 120.0,
    "supervision.standby": 0,
    "supervision.root": (),
    "supervision.ingest": (),
    "supervision.learning": (),
    "supervision.serving": (("standby", 1),),
    "storage.backend": "sqlite",
    "storage.busy_timeout_s": 10.0,
    "storage.couchbase.connection_string": "couchbase://127.0.0.1",
    "storage.couchbase.username": "rml",
    "storage.couchbase.password": "",
    "storage.couchbase.bucket": "rml",
    "storage.couchbase.scope": "rml",
    "storage.couchbase.durability": "majority",
    "storage.couchbase.bootstrap_timeout_s": 10.0,
    "storage.couchbase.kv_timeout_s": 2.5,
    "cluster.node_name": "",
    "cluster.roles": ("collector", "predictor", "learning"),
    "cluster.join": "",
    "mqtt.url": "",
    "mqtt.username": "",
    "mqtt.password": "",
    "mqtt.readings_topic": "rml/readings/+",
    "mqtt.outcomes_topic": "rml/outcomes/+",
    "mqtt.share_group": "rml",
    "mqtt.client_id_prefix": "rml",
    "mqtt.session_expiry_s": 86400,
    "mqtt.keepalive_s": 30,
    "mqtt.reconnect_min_s": 0.5,
    "mqtt.reconnect_max_s": 30.0,
    "mqtt.ca_file": "",
}

GOOD_TOKEN = "a-long-enough-token"


def dotted(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Every setting by its dotted key (nested tables such as storage.couchbase too)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            out.update(dotted(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def write(tmp_path: Path, text: str, name: str = "rml.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused_key(path: Path | None = None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ or {})
    return caught.value.key


# --- defaults and overrides ------------------------------------------------------------------


def test_every_key_has_its_documented_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    values = dotted(load_settings(None, {}))
    assert values.pop("data_dir") == str(tmp_path.resolve() / "rml-data")
    assert values == DEFAULTS


def test_toml_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
log_level = "debug"
[actor_system]
admin_port = 20001
[ingest]
port = 9001
tokens = ["{GOOD_TOKEN}", "another-long-token"]
[predict]
port = 9002
[learning]
min_outcomes = 50
model_type = "random_forest"
publish_margin = 0.01
check_interval_s = 2
""")
    s = load_settings(path, {})
    assert s.log_level == "debug"
    assert s.actor_system.admin_port == 20001
    assert s.ingest.port == 9001
    assert s.ingest.tokens == (GOOD_TOKEN, "another-long-token")
    assert s.predict.port == 9002
    assert s.learning.min_outcomes == 50
    assert s.learning.model_type == "random_forest"
    assert s.learning.publish_margin == 0.01
    # An integer in the file is accepted for a float setting, and stored as a float.
    assert s.learning.check_interval_s == 2.0 and isinstance(s.learning.check_interval_s, float)
    # Keys the file does not name keep their defaults.
    assert s.ingest.collectors == DEFAULTS["ingest.collectors"]


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
data_dir = "from-file"
[actor_system]
admin_port = 20001
[ingest]
port = 9001
tokens = ["{GOOD_TOKEN}"]
[learning]
min_outcomes = 50
""")
    env_dir = tmp_path / "from-env"
    s = load_settings(path, {
        "RML_INGEST_PORT": "9100",
        "RML_INGEST_TOKENS": "first-token-xyz, second-token-xyz",
        "RML_ACTOR_SYSTEM_ADMIN_PORT": "20100",
        "RML_DATA_DIR": str(env_dir),
        "RML_LEARNING_MIN_OUTCOMES": "75",
    })
    assert s.ingest.port == 9100
    assert s.ingest.tokens == ("first-token-xyz", "second-token-xyz")
    assert s.actor_system.admin_port == 20100
    assert s.data_dir == str(env_dir)
    assert s.learning.min_outcomes == 75


def test_environment_overrides_apply_without_a_file() -> None:
    s = load_settings(None, {
        "RML_PREDICT_PORT": "9200",
        "RML_ACTOR_SYSTEM_ALLOW_NON_LOOPBACK": "true",
        "RML_ACTOR_SYSTEM_BIND": "0.0.0.0",
        "RML_LEARNING_PUBLISH_MARGIN": "0.02",
    })
    assert s.predict.port == 9200
    assert s.actor_system.allow_non_loopback is True
    assert s.actor_system.bind == "0.0.0.0"
    assert s.learning.publish_margin == 0.02


def test_rml_variables_of_other_parts_are_left_alone() -> None:
    s = load_settings(None, {"RML_COUCHBASE_URL": "couchbase://x", "HOME_PORT": "x"})
    assert s.ingest.port == DEFAULTS["ingest.port"]


def test_rml_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[ingest]\nport = 9301\n")
    assert load_settings(None, {"RML_CONFIG": str(path)}).ingest.port == 9301


def test_an_explicit_path_wins_over_rml_config(tmp_path: Path) -> None:
    named = write(tmp_path, "[ingest]\nport = 9301\n", "named.toml")
    other = write(tmp_path, "[ingest]\nport = 9302\n", "other.toml")
    assert load_settings(named, {"RML_CONFIG": str(other)}).ingest.port == 9301


def test_relative_data_dir_in_a_file_is_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(config_dir, 'data_dir = "data/rml"\n')
    s = load_settings(path, {})
    assert s.data_dir == str(config_dir.resolve() / "data" / "rml")
    assert s.data_path == config_dir.resolve() / "data" / "rml"
    assert s.log_dir == s.data_path / "logs" and s.run_dir == s.data_path / "run"


def test_home_relative_data_dir_in_a_file_is_under_home(tmp_path: Path) -> None:
    path = write(tmp_path, 'data_dir = "~/rml-data"\n')
    assert load_settings(path, {}).data_dir == str(Path("~/rml-data").expanduser().resolve())


def test_absolute_data_dir_in_a_file_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs"
    path = write(tmp_path, f'data_dir = "{target}"\n')
    assert load_settings(path, {}).data_dir == str(target)


def test_settings_are_frozen() -> None:
    s = load_settings(None, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.data_dir = "elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ingest.port = 1  # type: ignore[misc]


# --- refusals name the dotted key ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[ingest]\nportt = 9000\n", "ingest.portt"),
        ("colour = 'blue'\n", "colour"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("ingest = 5\n", "ingest"),
    ],
)
def test_unknown_key_is_refused_with_its_dotted_name(tmp_path: Path, text: str, key: str) -> None:
    assert refused_key(write(tmp_path, text)) == key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[ingest]\nport = "9000"\n', "ingest.port"),
        ("[ingest]\nport = 9000.0\n", "ingest.port"),
        ("[ingest]\nport = true\n", "ingest.port"),
        ('[ingest]\ntokens = "one-long-token"\n', "ingest.tokens"),
        ("[ingest]\ntokens = [12345678]\n", "ingest.tokens"),
        ('[actor_system]\nallow_non_loopback = "yes"\n', "actor_system.allow_non_loopback"),
        ('[learning]\npublish_margin = "0.1"\n', "learning.publish_margin"),
        ("data_dir = 5\n", "data_dir"),
    ],
)
def test_wrong_type_in_the_file_is_refused_with_its_dotted_name(
    tmp_path: Path, text: str, key: str
) -> None:
    assert refused_key(write(tmp_path, text)) == key


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"RML_INGEST_PORT": "eighty"}, "ingest.port"),
        ({"RML_LEARNING_MIN_OUTCOMES": "1.5"}, "learning.min_outcomes"),
        ({"RML_ACTOR_SYSTEM_ALLOW_NON_LOOPBACK": "perhaps"}, "actor_system.allow_non_loopback"),
        ({"RML_LEARNING_PUBLISH_MARGIN": "nan"}, "learning.publish_margin"),
    ],
)
def test_wrong_type_in_the_environment_is_refused_with_its_dotted_name(
    environ: dict[str, str], key: str
) -> None:
    assert refused_key(environ=environ) == key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[ingest]\nport = 70000\n", "ingest.port"),
        ("[predict]\nport = -1\n", "predict.port"),
        ("[actor_system]\nadmin_port = 65536\n", "actor_system.admin_port"),
        ("[actor_system]\nadmin_port = 0\n", "actor_system.admin_port"),
    ],
)
def test_out_of_range_port_is_refused_with_its_dotted_name(
    tmp_path: Path, text: str, key: str
) -> None:
    assert refused_key(write(tmp_path, text)) == key


def test_out_of_range_port_from_the_environment_is_refused() -> None:
    assert refused_key(environ={"RML_INGEST_PORT": "65536"}) == "ingest.port"


def test_short_token_is_refused_with_its_dotted_name(tmp_path: Path) -> None:
    text = f'[predict]\ntokens = ["{GOOD_TOKEN}", "short"]\n'
    assert refused_key(write(tmp_path, text)) == "predict.tokens"
    assert refused_key(environ={"RML_INGEST_TOKENS": f"{GOOD_TOKEN},short"}) == "ingest.tokens"


def test_empty_token_list_is_refused_with_its_dotted_name(tmp_path: Path) -> None:
    assert refused_key(write(tmp_path, "[ingest]\ntokens = []\n")) == "ingest.tokens"
    assert refused_key(environ={"RML_PREDICT_TOKENS": " , "}) == "predict.tokens"


def test_unknown_model_type_is_refused_with_its_dotted_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[learning]\nmodel_type = "neural_net"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert caught.value.key == "learning.model_type"
    assert "decision_tree" in str(caught.value)


def test_non_loopback_bind_is_refused_without_allow_non_loopback(tmp_path: Path) -> None:
    path = write(tmp_path, '[actor_system]\nbind = "0.0.0.0"\n')
    assert refused_key(path) == "actor_system.bind"
    allowed = write(tmp_path, '[actor_system]\nbind = "0.0.0.0"\nallow_non_loopback = true\n',
                    "allowed.toml")
    assert load_settings(allowed, {}).actor_system.bind == "0.0.0.0"


@pytest.mark.parametrize("bind", ["127.0.0.1", "localhost", "::1"])
def test_loopback_binds_are_accepted(bind: str) -> None:
    assert load_settings(None, {"RML_ACTOR_SYSTEM_BIND": bind}).actor_system.bind == bind


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"RML_SUPERVISION_MAX_RESTARTS": "-1"}, "supervision.max_restarts"),
        ({"RML_SUPERVISION_PERIOD_S": "0"}, "supervision.period_s"),
        ({"RML_LOG_LEVEL": "loud"}, "log_level"),
        ({"RML_LEARNING_MIN_OUTCOMES": "9"}, "learning.min_outcomes"),
        ({"RML_LEARNING_PUBLISH_MARGIN": "0.5"}, "learning.publish_margin"),
        ({"RML_LEARNING_RETRAIN_INTERVAL_S": "-1"}, "learning.retrain_interval_s"),
        ({"RML_LEARNING_DRIFT_CHECK_INTERVAL_S": "-0.5"}, "learning.drift_check_interval_s"),
        ({"RML_LEARNING_DRIFT_WINDOW_MS": "60000"}, "learning.drift_window_ms"),
        ({"RML_LEARNING_DRIFT_THRESHOLD": "0"}, "learning.drift_threshold"),
        ({"RML_LEARNING_SHADOW_MAX_ERROR_RATE": "1.5"}, "learning.shadow_max_error_rate"),
        ({"RML_INGEST_COLLECTORS": "0"}, "ingest.collectors"),
        ({"RML_FEATURES_NAN_RATE_ROWS": "0"}, "features.nan_rate_rows"),
        ({"RML_INGEST_MAX_BODY_BYTES": "1000"}, "ingest.max_body_bytes"),
        ({"RML_STORAGE_BACKEND": "postgres"}, "storage.backend"),
        ({"RML_STORAGE_COUCHBASE_DURABILITY": "all"}, "storage.couchbase.durability"),
        ({"RML_STORAGE_COUCHBASE_CONNECTION_STRING": "http://cb"},
         "storage.couchbase.connection_string"),
        ({"RML_STORAGE_COUCHBASE_SCOPE": "_system"}, "storage.couchbase.scope"),
        ({"RML_STORAGE_COUCHBASE_BUCKET": "a/b"}, "storage.couchbase.bucket"),
        ({"RML_STORAGE_COUCHBASE_BOOTSTRAP_TIMEOUT_S": "0"},
         "storage.couchbase.bootstrap_timeout_s"),
        ({"RML_STORAGE_COUCHBASE_NOPE": "1"}, "storage.couchbase.nope"),
    ],
)
def test_out_of_range_value_is_refused_with_its_dotted_name(
    environ: dict[str, str], key: str
) -> None:
    assert refused_key(environ=environ) == key


# --- the file itself -------------------------------------------------------------------------


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[ingest\nport = \n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert caught.value.key == "config"
    assert str(path) in str(caught.value)


def test_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert caught.value.key == "config"
    assert str(path) in str(caught.value)


def test_missing_file_named_by_rml_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="absent.toml"):
        load_settings(None, {"RML_CONFIG": str(path)})


def test_a_directory_as_config_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, {})
    assert caught.value.key == "config"
    assert str(tmp_path) in str(caught.value)


def test_a_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'log_level = "\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert caught.value.key == "config"
    assert str(path) in str(caught.value)


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_with_invalid_config_exits_2_and_names_the_key(tmp_path: Path) -> None:
    bad = write(tmp_path, "[ingest]\nport = 70000\n", "BAD.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RML_")}
    result = subprocess.run(
        [sys.executable, "-m", "run_system", "--config", str(bad), "status"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "ingest.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_with_unknown_key_exits_2_and_names_the_key(tmp_path: Path) -> None:
    bad = write(tmp_path, "[learning]\nmin_outcome = 5\n", "BAD.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RML_")}
    result = subprocess.run(
        [sys.executable, "-m", "run_system", "--config", str(bad), "status"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "learning.min_outcome" in result.stderr


# --- per-supervisor policy ------------------------------------------------------------------


def test_a_supervisor_table_overrides_the_defaults_for_that_supervisor_only(
        tmp_path: Path) -> None:
    path = write(tmp_path, """
[supervision]
max_restarts = 7
[supervision.serving]
max_restarts = 20
strategy = "one_for_all"
standby = 2
[supervision.learning]
backoff_max_s = 5.0
""")
    sup = load_settings(path, {}).supervision
    assert (sup.policy("serving").max_restarts, sup.policy("serving").strategy,
            sup.policy("serving").standby) == (20, "one_for_all", 2)
    assert (sup.policy("learning").max_restarts, sup.policy("learning").backoff_max_s) == (7, 5.0)
    assert (sup.policy("ingest").max_restarts, sup.policy("ingest").standby) == (7, 0)
    assert sup.policy("root").strategy == "one_for_one"


def test_supervisor_policy_from_the_environment_merges_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[supervision.serving]\nmax_restarts = 20\n")
    sup = load_settings(path, {"RML_SUPERVISION_SERVING_STANDBY": "0",
                               "RML_SUPERVISION_INGEST_STANDBY": "1"}).supervision
    assert (sup.policy("serving").max_restarts, sup.policy("serving").standby) == (20, 0)
    assert sup.policy("ingest").standby == 1


@pytest.mark.parametrize(("text", "key"), [
    ("[supervision.serving]\nstrategy = \"all_at_once\"\n", "supervision.serving.strategy"),
    ("[supervision.serving]\nrestarts = 3\n", "supervision.serving.restarts"),
    ("[supervision.learning]\nstandby = 1\n", "supervision.learning.standby"),
    ("[supervision.ingest]\nheartbeat_timeout_s = 0.1\n",
     "supervision.ingest.heartbeat_timeout_s"),
    ("[supervision.serving]\nbackoff_min_s = 3.0\n", "supervision.serving.backoff_min_s"),
    ("[supervision]\nserving = 3\n", "supervision.serving"),
])
def test_a_bad_supervisor_table_is_refused_with_its_key(tmp_path: Path, text: str,
                                                          key: str) -> None:
    assert refused_key(write(tmp_path, text)) == key


def test_the_tree_takes_each_supervisors_policy(tmp_path: Path) -> None:
    from supervision.spec import system_tree

    path = write(tmp_path, "[supervision.serving]\nmax_restarts = 20\nstandby = 2\n"
                           "[supervision.ingest]\nstrategy = \"rest_for_one\"\n")
    tree = system_tree(load_settings(path, {}))
    subs = {c.name: c.spec for c in tree.children if c.spec is not None}
    assert (subs["serving"].policy.max_restarts, subs["serving"].policy.standby,
            subs["serving"].standby_role) == (20, 2, "predictor")
    assert (subs["ingest"].policy.strategy, subs["ingest"].policy.standby) == ("rest_for_one", 0)
    assert subs["learning"].standby_role is None and tree.policy.max_restarts == 10


def test_a_supervisors_batch_heartbeat_timeout_reaches_its_batch_children(
        tmp_path: Path) -> None:
    from supervision.spec import system_tree

    path = write(tmp_path, "[supervision.learning]\nbatch_heartbeat_timeout_s = 300\n"
                           "heartbeat_timeout_s = 5\n")
    tree = system_tree(load_settings(path, {}))
    timeouts = {c.name: c.heartbeat_timeout_s for sub in tree.children if sub.spec
                for c in sub.spec.children}
    assert (timeouts["learner"], timeouts["publisher"]) == (300.0, 300.0)
    assert timeouts["feature-generator"] == 120.0 and timeouts["predictor-1"] is None


def test_couchbase_settings_come_from_the_file_and_the_password_from_the_environment(
        tmp_path: Path) -> None:
    path = write(tmp_path, """
[storage.couchbase]
connection_string = "couchbase://cb1.example.internal"
username = "rml-prod"
bucket = "rml"
scope = "prod"
durability = "persist_to_majority"
""")
    s = load_settings(path, {"RML_STORAGE_COUCHBASE_PASSWORD": "from-the-env",
                             "RML_STORAGE_COUCHBASE_KV_TIMEOUT_S": "5"})
    cb = s.storage.couchbase
    assert (cb.connection_string, cb.username, cb.scope, cb.durability, cb.kv_timeout_s) == (
        "couchbase://cb1.example.internal", "rml-prod", "prod", "persist_to_majority", 5.0)
    assert cb.password == "from-the-env"
    assert "from-the-env" not in repr(s)
    assert refused_key(write(tmp_path, "[storage.couchbase]\nport = 1\n", "bad.toml")) == (
        "storage.couchbase.port")


# --- [mqtt] ------------------------------------------------------------------------------


def test_mqtt_settings_from_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[mqtt]\nurl = "mqtts://broker.internal"\nusername = "rml"\n')
    s = load_settings(path, {"RML_MQTT_PASSWORD": "from-env", "RML_MQTT_READINGS_TOPIC": "a/+"})
    assert s.mqtt.address() == ("broker.internal", 8883, True)
    assert (s.mqtt.password, s.mqtt.readings_topic) == ("from-env", "a/+")
    assert "from-env" not in repr(s.mqtt)
    assert load_settings(None, {"RML_MQTT_URL": "mqtt://127.0.0.1"}).mqtt.address() == (
        "127.0.0.1", 1883, False)


@pytest.mark.parametrize(("text", "key"), [
    ('[mqtt]\nurl = "http://broker"\n', "mqtt.url"),
    ('[mqtt]\nurl = "mqtt://"\n', "mqtt.url"),
    ('[mqtt]\nurl = "mqtt://b:99999"\n', "mqtt.url"),
    ('[mqtt]\nurl = "mqtt://b"\nreadings_topic = "rml/#/x"\n', "mqtt.readings_topic"),
    ('[mqtt]\nurl = "mqtt://b"\noutcomes_topic = "rml/re+"\n', "mqtt.outcomes_topic"),
    ('[mqtt]\nurl = "mqtt://b"\noutcomes_topic = "rml/readings/+"\n', "mqtt.outcomes_topic"),
    ('[mqtt]\nurl = "mqtt://b"\nshare_group = "a/b"\n', "mqtt.share_group"),
    ('[mqtt]\nurl = "mqtt://b"\nreconnect_min_s = 9.0\nreconnect_max_s = 1.0\n',
     "mqtt.reconnect_min_s"),
    ('[mqtt]\nurl = "mqtt://b"\npassword = "x"\n', "mqtt.username"),
])
def test_bad_mqtt_settings_are_refused_by_name(tmp_path: Path, text: str, key: str) -> None:
    assert refused_key(write(tmp_path, text)) == key


@pytest.mark.parametrize("seconds", [0.0, 0.01, -1.0, 7200.0])
def test_a_row_freshness_bound_out_of_range_is_refused(tmp_path: Path, seconds: float) -> None:
    path = write(tmp_path, f"[predict]\nrow_freshness_s = {seconds}\n")
    assert refused_key(path) == "predict.row_freshness_s"
