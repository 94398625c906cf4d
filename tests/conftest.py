"""Fixtures shared by the end-to-end modules: each module defines its own ``daemon``
(settings differ), and gets HTTP clients for it from here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon.gateway import HttpClient
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
