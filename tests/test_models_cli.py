"""``rml models``, ``rml train`` and ``rml rollback`` where no daemon is needed (or none runs):
the listing read from a real registry file, job files refused with the field named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from config.job import ModelType
from daemon.registry_cli import load_job_file
from runtime.group import free_ports
from storage.shadow import ShadowCounts
from storage.sqlite.registry import SQLiteModelRegistry
from storage.sqlite.shadow import SQLiteShadowTrials


def _rml(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RML_")}
    env["RML_DATA_DIR"] = str(data_dir)
    # A port nothing listens on: never reach a daemon someone else runs on the default one.
    env["RML_ACTOR_SYSTEM_ADMIN_PORT"] = str(free_ports(1)[0])
    return subprocess.run([sys.executable, "-m", "run_system", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def _lineage(outcomes: int, model_type: str) -> dict[str, Any]:
    job = {"model_type": model_type, "hyperparameters": {"max_depth": 6}, "seed": 7,
           "test_fraction": 0.25, "window_ms": 21_600_000}
    return {"facts": {"readings": 10 * outcomes, "outcomes": outcomes,
                      "first_timestamp": 1_700_000_000_000, "last_timestamp": 1_700_086_400_000,
                      "content_hash": f"{outcomes:064x}"},
            "feature_collection": {"id": 1, "features": ["animal_estimate", "zebra_share"]},
            "job": job, "metrics": {"roc_auc": 0.7}, "code_version": "0.1.0+abc",
            "created_at_ms": 1_700_100_000_000}


@pytest.fixture()
def registry_dir(tmp_path: Path) -> Path:
    """Three versions: 1 published, 2 published over it, 3 rejected; then 1 rolled back to,
    and 4 ended in shadow."""
    registry = SQLiteModelRegistry(tmp_path / "models.sqlite")
    versions = [registry.register(feature_collection_id=1, job=_lineage(n, kind)["job"],
                                  metrics={"roc_auc": auc, "accuracy": 0.7},
                                  lineage=_lineage(n, kind), artifact=b"model",
                                  created_at_ms=1_700_100_000_000 + n)
                for n, kind, auc in ((500, "decision_tree", 0.71), (900, "random_forest", 0.74),
                                     (1300, "decision_tree", 0.62),
                                     (1700, "decision_tree", 0.75))]
    registry.promote(versions[0], "first model", 1)
    registry.promote(versions[1], "ROC AUC 0.74 >= champion 0.71", 2)
    registry.set_status(versions[2], "rejected", "ROC AUC 0.62 < champion 0.74", 3)
    trials = SQLiteShadowTrials(tmp_path / "models.sqlite")
    trials.start(versions[3], 50, 4)
    trials.record(versions[3], "p1", ShadowCounts(20, 19, 0), 5)
    trials.close()
    registry.set_status(versions[3], "shadow", "passed the gate; serving in shadow", 4)
    registry.set_status(versions[3], "rejected", "shadow ended unfinished after 20/50", 6)
    registry.promote(versions[0], "rollback by operator: v2 misbehaves", 7)
    registry.close()
    return tmp_path


def test_models_json_lists_every_version_with_lineage_status_and_history(
        registry_dir: Path) -> None:
    done = _rml(registry_dir, "models", "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    models = {m["version"]: m for m in view["models"]}
    assert [(v, m["status"]) for v, m in sorted(models.items())] == [
        (1, "champion"), (2, "retired"), (3, "rejected"), (4, "rejected")]
    one = models[1]
    assert one["status_reason"] == "rollback by operator: v2 misbehaves"
    assert one["facts"] == _lineage(500, "decision_tree")["facts"]
    assert one["feature_collection"] == {"id": 1, "features": ["animal_estimate", "zebra_share"]}
    assert one["job"]["model_type"] == "decision_tree"
    assert one["metrics"] == {"roc_auc": 0.71, "accuracy": 0.7}
    assert one["code_version"] == "0.1.0+abc"
    assert one["created_at_ms"] == 1_700_100_000_500
    assert [h["status"] for h in one["history"]] == ["candidate", "champion", "retired",
                                                     "champion"]
    assert models[2]["status_reason"].startswith("replaced by version 1: rollback by operator")
    assert models[4]["shadow"]["served"] == 20 and models[4]["shadow"]["target"] == 50
    assert [(c["version"], c["previous_version"]) for c in view["champion_history"]] == [
        (1, None), (2, 1), (1, 2)]


def test_models_human_view_shows_lineage_and_the_rollback(registry_dir: Path) -> None:
    done = _rml(registry_dir, "models")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "version 3    rejected" in text
    assert "rejected: ROC AUC 0.62 < champion 0.74" in text
    assert "facts: 9000 readings, 900 outcomes" in text
    assert "job: random_forest" in text
    assert "shadow: 20/50 requests" in text
    assert text.rstrip().endswith("version 1 (replacing version 2): rollback by operator: "
                                  "v2 misbehaves")


def test_models_without_a_registry_says_there_are_none(tmp_path: Path) -> None:
    done = _rml(tmp_path / "empty", "models")
    assert (done.returncode, done.stdout.strip()) == (0, "no models registered")
    listed = json.loads(_rml(tmp_path / "empty", "models", "--json").stdout)
    assert listed == {"models": [], "champion_history": []}


@pytest.mark.parametrize(("text", "field"), [
    ('[job]\nmodel_type = "decision_tree"\n[job.hyperparameters]\nmax_depth = 99\n',
     "job.hyperparameters.max_depth"),
    ('[job]\nmodel_type = "svm"\n', "job.model_type"),
    ("[job]\nseeds = 3\n", "job.seeds"),
    ('[job]\nmodel_type = "decision_tree"\n[learning]\nmin_outcomes = 3\n', "learning"),
    ("[job\n", "job"),
])
def test_train_refuses_an_invalid_job_file_naming_the_field(tmp_path: Path, text: str,
                                                            field: str) -> None:
    job = tmp_path / "job.toml"
    job.write_text(text)
    done = _rml(tmp_path, "train", "--job", str(job))
    assert done.returncode == 2
    assert f"invalid configuration: {field}:" in done.stderr


def test_train_with_a_missing_job_file_is_refused(tmp_path: Path) -> None:
    done = _rml(tmp_path, "train", "--job", str(tmp_path / "nope.toml"))
    assert done.returncode == 2 and "job: cannot read" in done.stderr


def test_a_job_file_may_be_a_job_table_or_bare_keys(tmp_path: Path) -> None:
    table = tmp_path / "table.toml"
    table.write_text('[job]\nmodel_type = "random_forest"\nseed = 3\n'
                     "[job.hyperparameters]\nn_estimators = 20\n")
    bare = tmp_path / "bare.toml"
    bare.write_text('model_type = "random_forest"\nseed = 3\n'
                    "[hyperparameters]\nn_estimators = 20\n")
    job = load_job_file(table)
    assert job == load_job_file(bare)
    assert (job.model_type, job.seed, job.params["n_estimators"]) == (ModelType.RANDOM_FOREST,
                                                                      3, 20)
    with pytest.raises(ConfigError, match="job.test_fraction"):
        bare.write_text("test_fraction = 0.9\n")
        load_job_file(bare)


def test_train_and_rollback_without_a_daemon_fail_with_a_reason(tmp_path: Path) -> None:
    train = _rml(tmp_path, "train")
    assert train.returncode == 1 and "no daemon answers" in train.stderr
    rollback = _rml(tmp_path, "rollback", "1")
    assert rollback.returncode == 1 and "no daemon answers" in rollback.stderr
    bad = _rml(tmp_path, "rollback", "0")
    assert bad.returncode == 2 and "VERSION" in bad.stderr
