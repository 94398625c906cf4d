"""What a supervisor supervises: child specs, strategies, restart types, the system tree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from config.settings import Settings
from config.supervision import SupervisorPolicy

__all__ = ["ROOT_NAME", "SUPERVISOR_CLASS", "ChildSpec", "Restart", "Strategy", "SupervisorSpec",
           "system_tree"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
#: permanent: always restarted; transient: only after an abnormal exit;
#: temporary: never restarted (as in Erlang/OTP).
Restart = Literal["permanent", "transient", "temporary"]

SUPERVISOR_CLASS = "supervision.supervisor.Supervisor"
#: The root supervisor's Thespian ``globalName``: the one way in from outside.
ROOT_NAME = "rml-root"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child: its name, role, actor class (by module path) and restart type."""

    name: str
    role: str
    actor_class: str
    restart: Restart = "permanent"
    spec: SupervisorSpec | None = None  # set when the child is itself a supervisor
    # Silence (no Pong) longer than this gets the child killed; None: its supervisor's.
    heartbeat_timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    """A supervisor's children and its policy (strategy, intensity, backoff, liveness,
    standbys: ``config.supervision.SupervisorPolicy``)."""

    name: str
    children: tuple[ChildSpec, ...]
    policy: SupervisorPolicy
    heartbeat_interval_s: float = 0.5
    # Warm spares (``policy.standby``) of this role: started and loaded but not serving; a
    # dead child of that role is replaced by promoting one (a message), not a new actor.
    standby_role: str | None = None


#: Roles that work for seconds inside one handler (training, catching up, judging),
#: so a Pong can be that late from a healthy actor.
BATCH_ROLES = frozenset({"learner", "feature_generator", "publisher"})


#: Roles whose actors can wait as warm standbys (replicated, sharing a port).
STANDBY_ROLES = ("predictor", "collector")


def _supervisor(settings: Settings, name: str, children: tuple[ChildSpec, ...]) -> SupervisorSpec:
    """``name``'s spec with its policy from ``[supervision]`` and ``[supervision.<name>]``."""
    policy = settings.supervision.policy(name)
    roles = [c.role for c in children if c.role in STANDBY_ROLES]
    return SupervisorSpec(
        name=name, children=children,
        policy=policy,  # standby is 0 but for ingest and serving (config.supervision)
        heartbeat_interval_s=settings.supervision.heartbeat_interval_s,
        standby_role=roles[0] if roles else None,
    )


def _worker(settings: Settings, supervisor: str, name: str, role: str,
            actor_class: str) -> ChildSpec:
    """A leaf under ``supervisor``: batch roles get that supervisor's batch timeout."""
    batch = settings.supervision.policy(supervisor).batch_heartbeat_timeout_s
    timeout = batch if role in BATCH_ROLES else None
    return ChildSpec(name, role, actor_class, heartbeat_timeout_s=timeout)


def _sub(settings: Settings, name: str, children: tuple[ChildSpec, ...]) -> ChildSpec:
    return ChildSpec(name=name, role="supervisor", actor_class=SUPERVISOR_CLASS,
                     spec=_supervisor(settings, name, children))


def system_tree(settings: Settings) -> SupervisorSpec:
    """The daemon's tree: ingest, learning and serving each under their own supervisor,
    so a failure is contained where it happens."""
    collectors = tuple(
        _worker(settings, "ingest", f"collector-{i}", "collector", "actors.collector.Collector")
        for i in range(1, settings.ingest.collectors + 1)
    )
    ingest = _sub(
        settings,
        "ingest",
        (
            *collectors,
            _worker(settings, "ingest", "feature-generator", "feature_generator",
                    "actors.feature_generator.FeatureGenerator"),
        ),
    )
    learning = _sub(
        settings,
        "learning",
        (
            _worker(settings, "learning", "learner", "learner", "actors.learner.Learner"),
            _worker(settings, "learning", "publisher", "publisher", "actors.publisher.Publisher"),
        ),
    )
    predictors = tuple(
        _worker(settings, "serving", f"predictor-{i}", "predictor", "actors.predictor.Predictor")
        for i in range(1, settings.predict.replicas + 1)
    )
    serving = _sub(settings, "serving", predictors)
    return _supervisor(settings, "root", (ingest, learning, serving))
