"""MQTT ingest beside HTTP ingest, on one real daemon and a real Mosquitto, in one run.

    .venv/bin/python bench/mqtt_ingest.py [--seconds 5] [--gateways 4]

A daemon (temporary directory, free ports on 127.0.0.1, always stopped) with ``[mqtt]``
pointing at a Mosquitto started on the project's own config (``deploy/mosquitto.conf``).
For batches of 100 and of 1,000 readings, ``--gateways`` gateways send unique readings
for ``--seconds``:

- over HTTP: closed loop, each waits for its answer (readings acknowledged per second);
- over MQTT: QoS 1, each keeps up to 100 messages in flight (paho's window); readings
  stored per second, from the first publish until the last one is in the store (the
  collectors acknowledge a message only once it is committed).

Every reading published over MQTT must be in the store at the end (checked). Printed:
readings/s each way and MQTT's as a ratio of HTTP's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as mqtt  # noqa: E402
from _daemon import bench_daemon  # noqa: E402

from config.settings import Settings  # noqa: E402
from daemon.status import collect_status  # noqa: E402
from players.broker import mosquitto_binary, running_broker  # noqa: E402
from rml_client import GatewayClient, RmlError  # noqa: E402
from storage.backend import StoreBackend  # noqa: E402

TOKEN = "mqtt-bench-token-0123"


def batch(sensor: str, start: int, size: int, now_ms: int) -> list[dict[str, object]]:
    return [{"sensor_id": sensor, "location_id": 1 + (start + i) % 10,
             "reading_id": str(start + i), "timestamp": now_ms - 60_000,
             "animals_lower": 3 + i % 5, "animals_upper": 9 + i % 7,
             "percent_zebras": (i % 10) / 10} for i in range(size)]


def stored(settings: Settings) -> int:
    """Every reading in the store (a count: cheap to poll)."""
    backend = StoreBackend(settings, read_only=True)
    try:
        return backend.facts().counts().readings
    finally:
        backend.close()


def in_threads(gateway: Callable[[int], None], n: int) -> float:
    """Run ``gateway(0..n-1)`` in ``n`` threads; the seconds until all are done."""
    began = time.monotonic()
    threads = [threading.Thread(target=gateway, args=(g,)) for g in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - began


def http_rate(settings: Settings, size: int, seconds: float, gateways: int) -> float:
    done = [0] * gateways
    now_ms = int(time.time() * 1000)

    def gateway(g: int) -> None:
        client = GatewayClient(port=settings.ingest.port, token=TOKEN, batch_size=size,
                               timeout_s=30.0)
        deadline, n = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            with contextlib.suppress(RmlError):  # not acknowledged after the retries
                done[g] += client.send(batch(f"http-{size}-{g}", n, size, now_ms)).accepted
            n += size
        client.close()

    seconds_taken = in_threads(gateway, gateways)
    return sum(done) / seconds_taken


def mqtt_rate(settings: Settings, port: int, size: int, seconds: float,
              gateways: int) -> tuple[float, int, int]:
    """(readings stored per second, published, stored)."""
    now_ms = int(time.time() * 1000)
    published = [0] * gateways
    before = stored(settings)

    def gateway(g: int) -> None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{size}-{g}",
                             protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(100)
        acked = [0]
        client.on_publish = lambda c, u, mid, reason, p: acked.__setitem__(0, acked[0] + 1)
        client.connect("127.0.0.1", port)
        client.loop_start()
        deadline, n, sent = time.monotonic() + seconds, 0, 0
        while time.monotonic() < deadline:
            payload = json.dumps({"readings": batch(f"mqtt-{size}-{g}", n, size, now_ms)})
            client.publish(f"rml/readings/bench-{g}", payload, qos=1)
            sent += 1
            n += size
            while sent - acked[0] >= 100:
                time.sleep(0.001)  # the in-flight window is full
        end = time.monotonic() + 60.0
        while acked[0] < sent and time.monotonic() < end:
            time.sleep(0.005)
        published[g] = n
        client.disconnect()
        client.loop_stop()

    began = time.monotonic()
    in_threads(gateway, gateways)
    total = sum(published)
    deadline = time.monotonic() + 120.0
    count = 0
    while time.monotonic() < deadline:
        count = stored(settings) - before
        if count >= total:
            break
        time.sleep(0.05)
    return count / (time.monotonic() - began), total, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--gateways", type=int, default=4)
    args = parser.parse_args()
    if mosquitto_binary() is None:
        print("no mosquitto broker: install Debian's `mosquitto` package")
        return 2
    lost = 0
    with tempfile.TemporaryDirectory(prefix="rml-mqtt-bench-") as folder, \
            running_broker(Path(folder) / "broker") as broker:
        extra = (f'[mqtt]\nurl = "{broker.url}"\n'
                 "[learning]\nmin_outcomes = 100000\n")
        with bench_daemon(extra, prefix="rml-mqtt-bench-", tokens=(TOKEN,)) as (settings, _):
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:  # both collectors subscribed
                if collect_status(settings)["mqtt"]["connected"] >= 2:
                    break
                time.sleep(0.1)
            print(f"{args.gateways} gateways, {args.seconds:g} s each way, 2 collectors")
            for size in (100, 1000):
                http = http_rate(settings, size, args.seconds, args.gateways)
                rate, total, count = mqtt_rate(settings, broker.port, size, args.seconds,
                                               args.gateways)
                lost += total - count
                print(f"  batches of {size:>5}: HTTP {http:>9,.0f} readings/s | MQTT "
                      f"{rate:>9,.0f} readings/s stored ({count:,}/{total:,} published) | "
                      f"MQTT/HTTP {rate / http:.2f}x")
    print(f"lost over MQTT: {lost}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
