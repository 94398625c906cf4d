"""The daemon's life: the launcher and the keeper, status, the CLI verbs.

The process group, the logs and loopback-only Thespian live in ``runtime`` (below the actors,
which use them). The demo, chaos, the regime change, the gateway clients and the broker are
players (``players``, above the daemon). Their old names here keep importing them (``MOVED``).
"""

from runtime.moved import keep_old_names

#: Old module name -> where it lives now.
MOVED: dict[str, str] = {
    "daemon.broker": "players.broker",
    "daemon.chaos": "players.chaos",
    "daemon.demo": "players.demo",
    "daemon.gateway": "players.gateway",
    "daemon.regime_change": "players.regime_change",
    "daemon.group": "runtime.group",
    "daemon.logs": "runtime.logs",
    "daemon.loopback": "runtime.loopback",
}

keep_old_names(MOVED)
