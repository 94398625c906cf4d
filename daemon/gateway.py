"""HTTP clients that play field gateways and services (the demo, tests and benches use them).

A client, not a server: ``http.client`` with keep-alive, reconnecting when a
collector or predictor it was talking to is killed. A batch whose answer was
lost is sent again; the store reports what it already had as duplicates, so
nothing is lost and nothing is stored twice.
"""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = ["HttpClient", "IngestTally", "send_items"]


class HttpClient:
    """One keep-alive connection to ``host:port`` with a bearer token."""

    def __init__(self, host: str, port: int, token: str, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.token, self.timeout_s = host, port, token, timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: bytes = b"",
                content_type: str = "application/json", retries: int = 20,
                auth: bool = True) -> tuple[int, dict[str, str], bytes]:
        """Send once; on a broken connection reconnect and send again (bounded)."""
        headers = {"Content-Type": content_type}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        last: Exception | None = None
        for attempt in range(retries + 1):
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self.host, self.port,
                                                            timeout=self.timeout_s)
                self._conn.request(method, path, body=body or None, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                answer_headers = {k.lower(): v for k, v in response.getheaders()}
                if response.status == 503 and attempt < retries:
                    # Overloaded or restarting: back off as told, then try again.
                    time.sleep(min(float(answer_headers.get("retry-after", "0.2")), 1.0))
                    continue
                if answer_headers.get("connection", "").lower() == "close":
                    self.close()
                return response.status, answer_headers, data
            except (OSError, http.client.HTTPException) as exc:
                last = exc
                self.close()
                time.sleep(min(0.02 * (attempt + 1), 0.5))
        raise ConnectionError(f"{self.host}:{self.port}{path}: {last}")

    def post(self, path: str, payload: Mapping[str, Any], fmt: str = "json",
             retries: int = 20) -> tuple[int, Any]:
        """POST ``payload`` as JSON or msgpack; the answer decoded the same way."""
        if fmt == "msgpack":
            status, headers, data = self.request("POST", path, msgpack.packb(payload),
                                                 "application/msgpack", retries)
        else:
            status, headers, data = self.request("POST", path, json.dumps(payload).encode(),
                                                 "application/json", retries)
        if headers.get("content-type", "").startswith("application/msgpack"):
            return status, msgpack.unpackb(data)
        return status, json.loads(data) if data else None


@dataclass
class IngestTally:
    """What the collectors answered for a stream of batches."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    failed_batches: int = 0

    def add(self, answer: Mapping[str, Any]) -> None:
        self.accepted += int(answer["accepted"])
        self.duplicates += int(answer["duplicates"])
        for item in answer["rejected"]:
            self.rejected[item["error"]] += 1
        self.batches += 1


def send_items(client: HttpClient, kind: str, items: Iterable[dict[str, Any]],
               batch_size: int = 1000, fmt: str = "json",
               tally: IngestTally | None = None) -> IngestTally:
    """POST ``items`` to ``/readings`` or ``/outcomes`` in batches; tally the answers."""
    tally = tally if tally is not None else IngestTally()
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        status, answer = client.post(f"/{kind}", {kind: batch}, fmt)
        if status == 200:
            tally.add(answer)
        else:
            tally.failed_batches += 1

    for item in items:
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
            batch = []
    if batch:
        flush()
    return tally
