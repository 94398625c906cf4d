"""A short chaos run on a real daemon: actors killed and stopped, the daemon killed whole,
and still every acknowledged reading is stored exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import load_settings
from players.chaos import run_chaos
from runtime.group import port_accepts
from tests.e2e_support import write_config

pytestmark = pytest.mark.e2e


def test_chaos_loses_nothing_and_stores_nothing_twice(tmp_path: Path) -> None:
    config = write_config(tmp_path, min_outcomes=100, retrain_every_outcomes=100_000)
    settings = load_settings(config, environ={})
    lines: list[str] = []
    report = run_chaos(settings, str(config), duration_s=20.0, kill_every_s=1.0, gateways=3,
                       predict_clients=2, say=lines.append)
    print("\n".join(lines + report.lines()))
    assert report.readings_acknowledged > 0
    assert report.kills and report.stopped and report.daemon_kills == 1
    assert report.lost == 0, report.lines()
    assert report.stored_twice == 0, report.lines()
    # No prediction lost to a killed or stopped replica (nor to the whole daemon's kill:
    # its clients wait for the restart, as real ones would retry).
    assert report.predictions_sent > 1000
    assert report.predictions_answered == report.predictions_sent, report.lines()
    ports = (settings.actor_system.admin_port, settings.ingest.port, settings.predict.port)
    assert not [p for p in ports if port_accepts("127.0.0.1", p, 0.2)], "a port is still bound"
