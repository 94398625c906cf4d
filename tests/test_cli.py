"""The ``rml`` verbs that need no running daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from storage.sqlite.deadletters import SQLiteDeadLetters


def _rml(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RML_")}
    env["RML_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "run_system", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_deadletters_lists_recorded_poison_messages_newest_first(tmp_path: Path) -> None:
    store = SQLiteDeadLetters(tmp_path / "system.sqlite")
    store.record(at_ms=1_000, actor="learner", message_type="TrainRequest",
                 message="TrainRequest(...)", error="Traceback ...\nValueError: first")
    store.record(at_ms=2_000, actor="predictor-1", message_type="Forwarded",
                 message="Forwarded(...)", error="Traceback ...\nKeyError: second")
    store.close()

    listed = json.loads(_rml(tmp_path, "deadletters", "--json").stdout)
    assert [(d["actor"], d["message_type"]) for d in listed] == [
        ("predictor-1", "Forwarded"), ("learner", "TrainRequest")]
    human = _rml(tmp_path, "deadletters")
    assert human.returncode == 0
    assert "KeyError: second" in human.stdout.splitlines()[0]


def test_deadletters_without_a_store_says_there_are_none(tmp_path: Path) -> None:
    done = _rml(tmp_path / "nothing-here", "deadletters")
    assert done.returncode == 0 and "no dead letters" in done.stdout


def test_stop_and_status_without_a_daemon(tmp_path: Path) -> None:
    assert _rml(tmp_path, "stop").stdout.strip() == "not running"
    status = _rml(tmp_path, "status", "--json")
    assert status.returncode == 3 and json.loads(status.stdout) == {"running": False}
