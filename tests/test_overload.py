"""Overload against a real daemon: beyond `[ingest] max_pending` the collectors refuse with
503 + Retry-After, nothing they acknowledged is lost, and they stay up (no restart)."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_support import TOKEN, RunningDaemon, running_daemon

pytestmark = pytest.mark.e2e

CONNECTIONS = 24  # concurrent keep-alive connections, against max_pending 2 per collector
BATCHES_PER_CONNECTION = 40  # the flood is bounded in count: 960 requests at most
BATCH = 1000  # readings per batch


def _body(run: str, n: int) -> bytes:
    readings = [
        {"sensor_id": f"overload-{run}", "location_id": 1 + i % 10,
         "reading_id": f"{n:06d}-{i:04d}", "timestamp": 1_700_000_000_000 + i,
         "animals_lower": 3 + i % 5, "animals_upper": 9 + i % 7, "percent_zebras": 0.5}
        for i in range(BATCH)
    ]
    return json.dumps({"readings": readings}).encode()


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, dict[str, str], Any]:
    conn.request("POST", "/readings", body=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    data = response.read()
    headers = {k.lower(): v for k, v in response.getheaders()}
    return response.status, headers, json.loads(data) if data else None


def _collectors(daemon: RunningDaemon) -> dict[str, tuple[int, int, str]]:
    return {a["name"]: (a["pid"], a["restarts"], a["state"])
            for a in daemon.status()["actors"] if a["name"].startswith("collector-")}


def test_overload_is_refused_with_retry_after_and_nothing_acknowledged_is_lost(
        tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    with running_daemon(tmp_path, sections={"ingest": {"max_pending": 2}}) as daemon:
        port = daemon.settings.ingest.port
        before = _collectors(daemon)
        assert len(before) >= 2 and all(s == "running" for _, _, s in before.values())

        lock = threading.Lock()
        statuses: Counter[int] = Counter()
        refused_without_retry_after: list[dict[str, str]] = []
        errors: list[str] = []
        acknowledged: list[int] = []
        start = threading.Barrier(CONNECTIONS)

        def flood(index: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            start.wait(30)  # every connection fires at once
            for k in range(BATCHES_PER_CONNECTION):
                n = index * BATCHES_PER_CONNECTION + k
                try:
                    status, headers, answer = _post(conn, _body(run, n))
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        errors.append(f"batch {n}: {exc!r}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    continue
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        assert answer["accepted"] + answer["duplicates"] == BATCH, answer
                        acknowledged.append(n)
                    elif status == 503 and "retry-after" not in headers:
                        refused_without_retry_after.append(headers)
                if headers.get("connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.close()

        threads = [threading.Thread(target=flood, args=(i,), daemon=True)
                   for i in range(CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(t.is_alive() for t in threads), "a flooding client never finished"

        assert statuses[503] > 0, f"no request was refused: {dict(statuses)}"
        assert not refused_without_retry_after, refused_without_retry_after
        assert statuses[200] > 0, f"nothing was acknowledged: {dict(statuses)}"
        assert set(statuses) <= {200, 503}, f"unexpected statuses: {dict(statuses)}"
        assert not errors, f"{len(errors)} connections broke, first: {errors[:3]}"

        # No collector was restarted by the flood (liveness must not kill a busy collector).
        assert _collectors(daemon) == before, "a collector was restarted during the flood"

        # Every acknowledged batch is stored, exactly once: sent again, all duplicates.
        # One connection, one request at a time: below max_pending, so never refused now.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in acknowledged:
            try:
                status, _, answer = _post(conn, _body(run, n))
            except (OSError, http.client.HTTPException):  # once, on a fresh connection
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status, _, answer = _post(conn, _body(run, n))
            assert status == 200, (n, status, answer)
            assert (answer["accepted"], answer["duplicates"]) == (0, BATCH), (n, answer)
        conn.close()

        # Still answering, and nobody was restarted (liveness did not kill a busy collector).
        health = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        health.request("GET", "/health")
        assert health.getresponse().status == 200
        health.close()
        assert _collectors(daemon) == before, "a collector was restarted during the resend"
