"""``rml migrate --to couchbase`` end to end: a daemon learns on SQLite and stops, the CLI
copies its data directory into the cluster (twice: nothing doubles), and a daemon started
on Couchbase serves the same champion from what was copied. Needs a cluster
(``RML_COUCHBASE_URL``, ``RML_COUCHBASE_USERNAME``, ``RML_COUCHBASE_PASSWORD``)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna
from tests.e2e_support import (
    NEEDS_CLUSTER,
    TOKEN,
    _env,
    _toml,
    running_daemon,
    storage_section,
    wait_for,
)

pytestmark = [pytest.mark.e2e, NEEDS_CLUSTER]

SAVANNA = Savanna(seed=13, n_locations=10, hours=48, end_ms=last_midnight_ms())


def migrate(config: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "run_system", "--config", str(config),
                           "migrate", "--to", "couchbase"], capture_output=True, text=True,
                          timeout=600, env=_env())
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_counts(output: str) -> dict[str, int]:
    """The 'new' column of migrate's table, by store."""
    rows = [line.rsplit(maxsplit=2) for line in output.splitlines()
            if line and line.split()[-1].replace(",", "").isdigit()]
    return {store.strip(): int(new.replace(",", "")) for store, _, new in rows}


def test_a_data_directory_moves_to_couchbase_and_serves_the_same_champion(
        tmp_path: Path) -> None:
    for name in ("sqlite", "couchbase"):
        (tmp_path / name).mkdir()
    with running_daemon(tmp_path / "sqlite", min_outcomes=200) as sqlite:
        ingest = HttpClient("127.0.0.1", sqlite.settings.ingest.port, TOKEN)
        send_items(ingest, "readings", SAVANNA.traffic().items, batch_size=1000)
        outcomes = send_items(ingest, "outcomes", SAVANNA.outcome_items(), batch_size=5000)
        ingest.close()
        champion = wait_for("a champion", sqlite.champion, 120.0, 0.2)
        with sqlite.stores() as stores:
            counts = stores.facts.counts()
        data_dir = sqlite.settings.data_path
    scope = "migrate-" + uuid.uuid4().hex[:10]
    section = storage_section("couchbase", scope)["storage"]
    config = tmp_path / "migrate.toml"
    config.write_text(f'data_dir = "{data_dir}"\n[storage]\n' + "".join(
        f"{k} = {_toml(v)}\n" for k, v in section.items()))
    first = new_counts(migrate(config))
    assert first["readings"] == counts.readings and first["outcomes"] == outcomes.accepted
    assert first["models"] >= 1
    second = new_counts(migrate(config))
    assert set(second.values()) == {0}, second  # run twice: nothing doubles
    with running_daemon(tmp_path / "couchbase",
                        storage_section("couchbase", scope)) as couchbase:
        assert couchbase.settings.storage.backend == "couchbase"
        with couchbase.stores() as stores:
            assert stores.facts.counts() == counts
        moved = couchbase.champion()
        assert moved is not None and moved.version == champion.version
        assert moved.artifact_sha256 == champion.artifact_sha256
        predictor = HttpClient("127.0.0.1", couchbase.settings.predict.port, TOKEN)
        status, answer = wait_for("a prediction", lambda: (
            r if (r := predictor.post("/model", {"location_id": 1}))[0] == 200 else None),
            60.0, 0.1)
        predictor.close()
        assert answer["model_version"] == champion.version
