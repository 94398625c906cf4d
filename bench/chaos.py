"""Chaos bench: ingest and predictions on a real daemon while its actors are killed.

    .venv/bin/python bench/chaos.py [--seconds 60] [--kill-every 1.0] [--nodes 1]
                                    [--predict-rate 6000] [--predict-clients 2]

The predictions come from ``--predict-clients`` processes (``rml_client.PredictionClient``,
keep-alive, paced to ``--predict-rate`` a second in all), each asked until answered as a
client would: a broken connection is opened again (any replica may accept it), a 503 waits
for its Retry-After, 4 attempts per node.

Prints readings acknowledged, lost (must be 0), stored twice (must be 0), predictions
answered (and asked a second) and the share answered by a fallback, restarts, and three
views of the time from a kill to the replacement: until the root's status shows it
running (polled by the killer, in a process of its own; for a predictor, from when it
answers HTTP, so that the polls do not take the GIL from the probe); for a predictor,
until its replacement answers HTTP on the predict port (the goal's measure); and from
the supervisors' own log, exit to running, by how (a warm standby promoted, or a new
actor started).

``--nodes N`` (default 1: one daemon) runs a cluster of N nodes on this machine: a leader
``a`` and members ``b``, ``c``, ... (``[cluster] join`` the leader, roles collector and
predictor), each on free ports of its own, all sharing one data directory. Gateway i sends
to node i % N's ingest port and prediction client j to node j % N's predict port, each
failing over to the next node's port when its own refuses (a prediction counts as
unanswered only if no node answers it). The killer picks its victims among the workers of
every node; the SIGSTOPs stay on the leader's predictor-1 and collector-1; and at half
time, instead of the whole leader, one member's whole process group is SIGKILLed: printed
are the time until all its replicas run on other nodes ("node kill to replicas
re-placed", the leader's status) and, once it is started again, until they all run on it
again ("rejoin to replicas home"). The members are stopped before the leader.

Traffic goes to 127.0.0.1 only; the daemons run in a temporary directory on
free ports and are always stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import string
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemon import bench_daemon  # noqa: E402

from config.settings import Settings, load_settings  # noqa: E402
from players.chaos import ChaosReport, run_chaos  # noqa: E402
from runtime.group import free_ports  # noqa: E402

LEARNING_TOML = "[learning]\nmin_outcomes = 100\nretrain_every_outcomes = 100000\n"


@contextlib.contextmanager
def cluster_configs(n: int, keep: bool) -> Iterator[list[tuple[Settings, str]]]:
    """``(settings, rml.toml path)`` of a leader ``a`` and ``n - 1`` members ``b``, ``c``,
    ... in one new temporary directory (``<tmp>/<node>/rml.toml``), on free ports of their
    own, sharing the data directory ``<tmp>/data``; nothing is started here."""
    if not 1 < n <= len(string.ascii_lowercase):
        raise ValueError(f"--nodes: 2 to {len(string.ascii_lowercase)} for a cluster")
    where: contextlib.AbstractContextManager[str] = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="rml-chaos-")) if keep
        else tempfile.TemporaryDirectory(prefix="rml-chaos-"))
    with where as tmp:
        if keep:
            print(f"data and logs in {tmp}")
        ports = free_ports(4 * n)
        out = []
        for i, name in enumerate(string.ascii_lowercase[:n]):
            admin, ingest, predict, metrics = ports[4 * i: 4 * i + 4]
            cluster = f'[cluster]\nnode_name = "{name}"\n'
            if i:
                cluster += (f'join = "127.0.0.1:{ports[0]}"\n'
                            'roles = ["collector", "predictor"]\n')
            folder = Path(tmp) / name
            folder.mkdir()
            config = folder / "rml.toml"
            config.write_text(
                f'data_dir = "{tmp}/data"\n[actor_system]\nadmin_port = {admin}\n'
                f"[ingest]\nport = {ingest}\n[predict]\nport = {predict}\n"
                f"[metrics]\nport = {metrics}\n{cluster}{LEARNING_TOML}")
            out.append((load_settings(config, environ={}), str(config)))
        yield out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=1.0)
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--predict-rate", type=float, default=6000.0,
                        help="predictions asked a second, in all")
    parser.add_argument("--predict-clients", type=int, default=2,
                        help="processes asking them (each paced to its share)")
    parser.add_argument("--nodes", type=int, default=1,
                        help="1: one daemon; N > 1: a leader and N - 1 members")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (its logs) and print where it is")
    args = parser.parse_args()
    # run_chaos starts and stops the daemons itself: only the directory, ports and configs here.
    report: ChaosReport
    if args.nodes > 1:
        with cluster_configs(args.nodes, args.keep) as nodes:
            (leader, config), members = nodes[0], nodes[1:]
            report = run_chaos(leader, config, duration_s=args.seconds,
                               kill_every_s=args.kill_every, gateways=args.gateways,
                               predict_rate=args.predict_rate,
                               predict_clients=args.predict_clients, members=members)
    else:
        with bench_daemon(LEARNING_TOML, prefix="rml-chaos-", keep=args.keep,
                          keep_note="data and logs in", start_daemon=False) as (settings, path):
            report = run_chaos(settings, str(path), duration_s=args.seconds,
                               kill_every_s=args.kill_every, gateways=args.gateways,
                               predict_rate=args.predict_rate,
                               predict_clients=args.predict_clients)
    print()
    for line in report.lines():
        print(line)
    predictor = report.kill_to_http_s
    median_ms = statistics.median(predictor) * 1000 if predictor else float("nan")
    print()
    print("goals: lost 0, stored twice 0, >= 99.9% of predictions answered, "
          "median predictor kill-to-answer < 50 ms")
    print(f"  lost {report.lost} | stored twice {report.stored_twice} | answered "
          f"{report.answered_share:.4%} ({report.answered_share / 0.999:.4f}x the goal) | "
          f"predictor kill-to-answer median {median_ms:.0f} ms ({median_ms / 50:.2f}x the goal)")
    return 0 if report.lost == 0 and report.stored_twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
