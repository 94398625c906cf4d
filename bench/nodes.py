"""Nodes bench: how fast a member joins, is noticed dead, gets its replicas back.

    .venv/bin/python bench/nodes.py [--rounds 5]

A leader and a member on loopback (each its own admin, process group and HTTP ports,
one data directory) in a temporary directory on free ports. The member is started, then
``--rounds`` times SIGKILLed as a whole process group and started again; at the end it
is stopped cleanly. The leader's status is polled (one Thespian client, every 5 ms) to
time, from each event: the member's replicas running on it (join), the node declared
down, its replicas running on the leader, and back on the member after a restart. The
raw limit beside the detection time is the configured ``heartbeat_timeout_s``: a dead
node cannot be told from a slow one sooner. Always stops both nodes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import Settings, load_settings  # noqa: E402
from daemon.process import RootClient, read_record, start, stop  # noqa: E402
from messages.protocol import StatusReport, StatusRequest  # noqa: E402
from runtime.group import end_group, free_ports  # noqa: E402

MEMBER_SLOTS = {"collector-1@b", "collector-2@b", "predictor-1@b", "predictor-2@b"}


def _config(tmp: Path, name: str, join: int | None) -> tuple[Settings, str]:
    admin, ingest, predict, metrics = free_ports(4)
    cluster = f'node_name = "{name}"\n'
    if join is not None:
        cluster += f'join = "127.0.0.1:{join}"\nroles = ["collector", "predictor"]\n'
    path = tmp / f"{name}.toml"
    path.write_text(f'data_dir = "{tmp}/data"\n[actor_system]\nadmin_port = {admin}\n'
                    f"[ingest]\nport = {ingest}\n[predict]\nport = {predict}\n"
                    f"[metrics]\nport = {metrics}\n[cluster]\n{cluster}")
    return load_settings(path, environ={}), str(path)


class Watch:
    """The leader's view, polled through one long-lived client."""

    def __init__(self, leader: Settings) -> None:
        self.client = RootClient(leader)

    def report(self) -> StatusReport | None:
        answer = self.client.ask(StatusRequest(uuid.uuid4().hex), 5.0)
        return answer if isinstance(answer, StatusReport) else None

    def until(self, predicate: Callable[[StatusReport], bool], timeout_s: float = 60.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            report = self.report()
            if report is not None and predicate(report):
                return time.monotonic()
            time.sleep(0.005)
        raise RuntimeError("timed out")


def running_on(report: StatusReport, node: str) -> set[str]:
    return {a.name for a in report.actors if a.node == node and a.state == "running"}


def node_state(report: StatusReport, node: str) -> str:
    return next((n.state for n in report.nodes if n.name == node), "absent")


def ms(values: list[float]) -> str:
    return (f"median {statistics.median(values) * 1000:6.0f} ms (min {min(values) * 1000:.0f}, "
            f"max {max(values) * 1000:.0f}, n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="rml-nodes-") as folder:
        tmp = Path(folder)
        leader, leader_config = _config(tmp, "a", None)
        member, member_config = _config(tmp, "b", leader.actor_system.admin_port)
        began = time.monotonic()
        start(leader, leader_config)
        figures["leader start (rml start returns)"] = [time.monotonic() - began]
        try:
            watch = Watch(leader)
            began = time.monotonic()
            start(member, member_config)
            returned = time.monotonic()
            placed = watch.until(lambda r: running_on(r, "b") >= MEMBER_SLOTS)
            figures["member start: rml start returns"] = [returned - began]
            figures["member start: its replicas running"] = [placed - began]
            for _ in range(args.rounds):
                record = read_record(member)
                assert record is not None
                killed = time.monotonic()
                end_group(record.pgid)
                down = watch.until(lambda r: node_state(r, "b") == "down")
                replaced = watch.until(lambda r: running_on(r, "a") >= MEMBER_SLOTS)
                figures.setdefault("SIGKILL of the member -> node down", []).append(down - killed)
                figures.setdefault("SIGKILL of the member -> replicas on the leader",
                                   []).append(replaced - killed)
                time.sleep(1.0)  # a settled state before it comes back
                began = time.monotonic()
                start(member, member_config)
                home = watch.until(lambda r: running_on(r, "b") >= MEMBER_SLOTS)
                figures.setdefault("member started again -> replicas home", []).append(
                    home - began)
            began = time.monotonic()
            stop(member)
            stopped = time.monotonic()
            report = watch.report()
            assert report is not None and running_on(report, "a") >= MEMBER_SLOTS
            figures["member rml stop (replicas handed to the leader first)"] = [stopped - began]
        finally:
            stop(member)
            stop(leader)
    timeout = leader.supervision.policy("root").heartbeat_timeout_s
    print(f"two nodes on loopback, {args.rounds} rounds; root heartbeat_timeout_s {timeout:g}")
    for what, values in figures.items():
        print(f"  {what:<56} {ms(values)}")
    detect = statistics.median(figures["SIGKILL of the member -> node down"])
    print(f"detection vs the raw limit (heartbeat_timeout_s {timeout:g} s): "
          f"{detect / timeout:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
