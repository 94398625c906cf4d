"""The demo's field gateways, and the raw HTTP client tests and benches use.

Gateways over HTTP are ``rml_client.GatewayClient`` (batches, each resent until
acknowledged: the store reports what it already had as duplicates, so nothing is lost and
nothing is stored twice); this module adds what only the demo plays: the talk's
``PreyReading`` spelling (``talk_item``) and gateways over MQTT (``publish_items``), and a
tally of many sends (``IngestTally``). ``HttpClient`` is the raw client for tests and
benches that look at statuses and bodies themselves (a 401, a 415, a malformed body):
``rml_client``'s connection, without its typed answers.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from rml_client import BatchResult, GatewayClient, HttpStatusError
from rml_client._http import Endpoint, Transport

__all__ = ["HttpClient", "IngestTally", "publish_items", "send_items", "talk_item"]


class HttpClient:
    """One keep-alive connection to ``host:port`` with a bearer token, answering raw
    statuses and bodies (``rml_client``'s transport: reconnects, retries a 503)."""

    def __init__(self, host: str, port: int, token: str, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.token, self.timeout_s = host, port, token, timeout_s
        self._transport = Transport(Endpoint("http", host, port), token or None,
                                    timeout_s=timeout_s, retries=20, deadline_s=None)

    def close(self) -> None:
        self._transport.close()

    def request(self, method: str, path: str, body: bytes = b"",
                content_type: str = "application/json", retries: int = 20,
                auth: bool = True) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body); a broken connection or a 503 is retried (at
        most ``retries`` times); ``ConnectionError`` when no answer came."""
        answer = self._transport.request(method, path, body, content_type, auth=auth,
                                         retries=retries)
        return answer.status, dict(answer.headers), answer.body

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
        """Count one batch's answer as the wire spells it."""
        self.accepted += int(answer["accepted"])
        self.duplicates += int(answer["duplicates"])
        for item in answer["rejected"]:
            self.rejected[item["error"]] += 1
        self.batches += 1

    def add_result(self, result: BatchResult) -> None:
        """Count a ``GatewayClient``'s result."""
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        self.rejected.update(result.rejected_by_error())
        self.batches += result.batches

    def merge(self, other: IngestTally) -> None:
        """Count another tally too."""
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected.update(other.rejected)
        self.batches += other.batches
        self.failed_batches += other.failed_batches


def send_items(client: HttpClient, kind: str, items: Iterable[dict[str, Any]],
               batch_size: int = 1000, fmt: str = "json",
               tally: IngestTally | None = None) -> IngestTally:
    """POST ``items`` to ``/readings`` or ``/outcomes`` of ``client``'s port in batches, with
    a ``GatewayClient``; tally the answers (a batch still refused after the retries is a
    failed batch; no connection at all raises ``ConnectionError``)."""
    tally = tally if tally is not None else IngestTally()
    todo = list(items)
    with GatewayClient(host=client.host, port=client.port, token=client.token or None,
                       format=fmt, batch_size=batch_size, timeout_s=client.timeout_s,
                       retries=20, deadline_s=None) as gateway:
        send = gateway.send_outcomes if kind == "outcomes" else gateway.send
        for start in range(0, len(todo), batch_size):
            try:
                tally.add_result(send(todo[start:start + batch_size]))
            except HttpStatusError:
                tally.failed_batches += 1
    return tally


#: The talk's names for a reading's fields (``messages._wire_fields.READING_ALIASES``).
_TALK_NAMES = {"sensor_id": "sensorId", "location_id": "locationId",
               "reading_id": "readingId", "animals_lower": "animalsLowerBound",
               "animals_upper": "animalsUpperBound", "percent_zebras": "percentZebras"}


def talk_item(item: dict[str, Any]) -> dict[str, Any]:
    """A reading item as a gateway written from the talk sends it: camelCase names and
    real-valued bounds (other keys and values, even malformed ones, kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if key in ("animals_lower", "animals_upper") and type(value) is int:
            value = float(value)
        out[_TALK_NAMES.get(key, key)] = value
    return out


def publish_items(host: str, port: int, gateway: str, kind: str,
                  items: Iterable[dict[str, Any]], batch_size: int = 1000,
                  timeout_s: float = 120.0) -> IngestTally:
    """Publish ``items`` over MQTT (QoS 1, msgpack batches on ``rml/<kind>/<gateway>``), each
    message asking for its answer on a response topic (MQTT 5), and tally the answers: the
    collectors answer once a message's items are committed."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    tally = IngestTally()
    answers: list[dict[str, Any]] = []
    done = threading.Event()
    expected = [0]
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        with lock:
            answers.append(json.loads(message.payload))
            if len(answers) >= expected[0]:
                done.set()

    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{gateway}-{kind}",
                         protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    replies = f"rml/answers/{gateway}"
    try:
        client.subscribe(replies, qos=1)
        subscribed.wait(10.0)  # the answers' subscription is in place before any question
        batch: list[dict[str, Any]] = []
        chunks = []
        for item in items:
            batch.append(item)
            if len(batch) >= batch_size:
                chunks.append(batch)
                batch = []
        if batch:
            chunks.append(batch)
        expected[0] = len(chunks)
        for chunk in chunks:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = replies
            properties.ContentType = "application/msgpack"
            client.publish(f"rml/{kind}/{gateway}", msgpack.packb({kind: chunk}), qos=1,
                           properties=properties)
        if chunks and not done.wait(timeout_s):
            tally.failed_batches = len(chunks) - len(answers)
    finally:
        client.disconnect()
        client.loop_stop()
    for answer in answers:
        if "error" in answer:
            tally.failed_batches += 1
        else:
            tally.add(answer)
    return tally
