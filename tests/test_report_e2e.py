"""``rml report`` against a real daemon: two models learned from gateway traffic, then the
report read back and held against the registry it was written from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna
from storage import open_sqlite_stores
from storage.registry import CANDIDATE, CHAMPION
from tests.e2e_support import TOKEN, RunningDaemon, running_daemon, wait_for
from tests.test_report import flat, parse, polylines, svg_title

pytestmark = pytest.mark.e2e

# Small enough to learn in seconds; two halves of the outcomes give two model versions.
SAVANNA = Savanna(seed=11, n_locations=30, hours=96, end_ms=last_midnight_ms())


def _judged_versions(daemon: RunningDaemon, count: int) -> Any:
    """The registry's records once ``count`` versions exist and the publisher judged each."""
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        records = stores.registry.versions()
        history = stores.registry.champion_history()
    if len(records) >= count and all(r.status != CANDIDATE for r in records):
        return records, history
    return None


def test_report_of_a_live_registry_shows_every_version_its_curves_and_lineage(
        tmp_path: Path) -> None:
    outcomes = SAVANNA.outcome_items()
    half = len(outcomes) // 2
    with running_daemon(tmp_path, min_outcomes=500, retrain_every_outcomes=500) as daemon:
        client = HttpClient("127.0.0.1", daemon.settings.ingest.port, TOKEN)
        try:
            readings = send_items(client, "readings", SAVANNA.traffic().items, batch_size=2000,
                                  fmt="msgpack")
            assert readings.failed_batches == 0
            assert send_items(client, "outcomes", outcomes[:half], 10_000).accepted == half
            wait_for("a first model", lambda: _judged_versions(daemon, 1), 60.0, 0.2)
            rest = send_items(client, "outcomes", outcomes[half:], 10_000)
            assert rest.accepted == len(outcomes) - half
        finally:
            client.close()
        records, history = wait_for("a second model, judged",
                                    lambda: _judged_versions(daemon, 2), 60.0, 0.2)
        output = tmp_path / "out" / "registry.html"
        done = daemon.rml("report", "--output", str(output))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {output} ({len(records)} model versions)"
    html = output.read_text(encoding="utf-8")
    page = parse(html)
    text = " ".join(" ".join(page.text).split())
    champion = next(r for r in records if r.status == CHAMPION)
    assert f"Champion: version {champion.version} (holdout ROC AUC " \
           f"{champion.metrics_map['roc_auc']:.4f}" in text
    assert f"{len(records)} model versions" in text
    assert f"{len(history)} promotion" in text

    charts = {svg_title(svg): polylines(svg) for svg in page.svgs}
    assert set(charts) == {"ROC curve", "Precision–recall curve"}
    for record in records:
        metrics = record.metrics_map
        for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"):
            assert f"{metrics[name]:.4f}" in text, (record.version, name)
        lineage = json.loads(record.lineage)
        assert lineage["facts"]["content_hash"][:12] in text
        evaluation = json.loads(record.evaluation)
        assert evaluation["holdout"]["rows"] > 0
        roc = next(points for label, points in charts["ROC curve"].items()
                   if label.split()[0] == f"v{record.version}")
        assert roc == pytest.approx(flat(evaluation["roc"]["fpr"], evaluation["roc"]["tpr"]),
                                    abs=1e-3)
        pr = next(points for label, points in charts["Precision–recall curve"].items()
                  if label.split()[0] == f"v{record.version}")
        assert pr == pytest.approx(
            flat(evaluation["pr"]["recall"], evaluation["pr"]["precision"]), abs=1e-3)
    assert "no curves recorded" not in text
