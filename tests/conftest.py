"""Fixtures shared by several modules: HTTP clients of the end-to-end modules' ``daemon``
(each module defines its own: settings differ), and the Couchbase SDK stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from players.gateway import HttpClient
from tests.couchbase_standin import StandinCluster
from tests.e2e_support import TOKEN, RunningDaemon


@pytest.fixture(scope="module")
def ingest(daemon: RunningDaemon) -> Iterator[HttpClient]:
    """A keep-alive client of the module's daemon's ingest port."""
    client = HttpClient("127.0.0.1", daemon.settings.ingest.port, TOKEN)
    yield client
    client.close()


@pytest.fixture(scope="module")
def predictor(daemon: RunningDaemon) -> Iterator[HttpClient]:
    """A keep-alive client of the module's daemon's predict port."""
    client = HttpClient("127.0.0.1", daemon.settings.predict.port, TOKEN)
    yield client
    client.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[StandinCluster]:
    """A Couchbase SDK stand-in of the test's own, its injected failures cleared after."""
    cluster = StandinCluster(tmp_path / "cb")
    yield cluster
    cluster.fail_after(None)
