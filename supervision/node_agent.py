"""A member node's agent: the root's eyes and hands on another host.

The root creates one ``NodeAgent`` on each member that joins (placed there by the
``rml.node`` capability) and pings it every heartbeat: a node whose agent stays silent past
the root's heartbeat timeout is declared down and its replicas are re-placed. A supervisor
cannot kill a pid on another host, so it asks the agent (``EndProcesses``); and before a
node that (re)joins takes replicas, its agent ends the workers an earlier tree left there
(``EndStaleWorkers``: a leader that died, a partition that healed), so that no stale
replica keeps serving the node's ports.
"""

from __future__ import annotations

import os
from typing import Any

from actors.base import WORKER_PROCESS_PREFIX, ReactiveActor
from messages.protocol import EndProcesses, EndStaleWorkers, Init, Ready, StaleWorkersEnded
from runtime.group import group_members, process_name, set_process_name
from runtime.logs import configure_logging, get_logger
from supervision.liveness import kill_ours

__all__ = ["AGENT_CLASS", "NodeAgent", "stale_workers"]

AGENT_CLASS = "supervision.node_agent.NodeAgent"
# Named as a worker: a newer agent ends an older one left behind (a join retried).
_AGENT_PROCESS_NAME = f"{WORKER_PROCESS_PREFIX}agent"


def stale_workers(pgid: int, own_pid: int) -> list[int]:
    """The worker processes of process group ``pgid`` (named ``rml:<role>``, agents too),
    but ours."""
    return [pid for pid in group_members(pgid)
            if pid != own_pid and process_name(pid).startswith(WORKER_PROCESS_PREFIX)]


class NodeAgent(ReactiveActor):
    """Answers the root's pings for its node; kills on its node what the leader asks."""

    def on_Init(self, msg: Init, sender: Any) -> None:  # noqa: N802
        if self.supervisor is None:
            self.supervisor = sender
            self.name = msg.name
            set_process_name(_AGENT_PROCESS_NAME)
            configure_logging(msg.settings.log_dir, msg.settings.log_level, actor=msg.name)
            self.log = get_logger(actor=msg.name, role="agent")
            self.log.info("node_agent_started")
        self.send(sender, Ready(self.name, "agent", os.getpid(), msg.correlation_id))

    def on_EndStaleWorkers(self, msg: EndStaleWorkers, sender: Any) -> None:  # noqa: N802
        stale = stale_workers(os.getpgrp(), os.getpid())
        if stale:
            self.log.warning("stale_workers_ended", pids=stale)
            kill_ours(set(stale))
        self.send(sender, StaleWorkersEnded(msg.correlation_id, tuple(stale)))

    def on_EndProcesses(self, msg: EndProcesses, sender: Any) -> None:  # noqa: N802
        self.log.warning("processes_ended", pids=list(msg.pids), reason=msg.reason)
        kill_ours(set(msg.pids))
