"""A Mosquitto broker on the project's own config (``deploy/mosquitto.conf``) on a loopback
port, its persistence in a folder of its own: for the demo, the MQTT bench and the tests,
which never use a broker they did not start. Needs Debian's ``mosquitto`` binary."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from runtime.group import free_ports, port_accepts

__all__ = ["SHIPPED", "Broker", "mosquitto_binary", "running_broker"]

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto.conf"


def mosquitto_binary() -> str | None:
    """The ``mosquitto`` executable, if installed (Debian puts it in /usr/sbin)."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None)


@dataclass
class Broker:
    """A running Mosquitto on 127.0.0.1:``port``."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = mosquitto_binary()
        assert binary is not None
        conf = self.folder / "mosquitto.conf"
        lines = []
        for line in SHIPPED.read_text().splitlines():
            if line.startswith("listener "):
                line = f"listener {self.port} 127.0.0.1"
            elif line.startswith("persistence_location "):
                line = f"persistence_location {self.folder}/"
            lines.append(line)
        if os.geteuid() == 0:
            # As root, Mosquitto switches to the user "mosquitto", which could not write its
            # persistence (sessions, queues) or its log here: they would be lost unnoticed.
            lines.append("user root")
        conf.write_text("\n".join(lines) + f"\nlog_dest file {self.folder}/mosquitto.log\n")
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10.0
        while not port_accepts("127.0.0.1", self.port, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / "mosquitto.log")
                raise RuntimeError("mosquitto did not start: " +
                                   (log.read_text()[-2000:] if log.exists() else "no log"))
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: it saves its sessions and queues first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5.0)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def running_broker(folder: Path) -> Iterator[Broker]:
    """A broker started in ``folder`` (created), always stopped."""
    folder.mkdir(parents=True, exist_ok=True)
    broker = Broker(free_ports(1)[0], folder)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        if port_accepts("127.0.0.1", broker.port, 0.2):
            raise RuntimeError(f"the broker's port {broker.port} is still bound")
