"""What a supervisor supervises: child specs, strategies, restart types, the system tree."""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    # The node whose slot this is ("": the supervisor's own); a member's replicas run there
    # while it is up and elsewhere while it is not (``supervision.nodes``).
    home: str = ""


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
    # The replicated roles' children as templates: each member node that joins gets its own
    # slots of them (``collector-1@b``), as many as its own settings ask for.
    replica_templates: tuple[ChildSpec, ...] = ()


#: Roles that work for seconds inside one handler (training, catching up, judging),
#: so a Pong can be that late from a healthy actor.
BATCH_ROLES = frozenset({"learner", "feature_generator", "publisher"})


#: Roles whose actors can wait as warm standbys (replicated, sharing a port).
STANDBY_ROLES = ("predictor", "collector")


def _supervisor(settings: Settings, name: str, children: tuple[ChildSpec, ...],
                templates: tuple[ChildSpec, ...] = ()) -> SupervisorSpec:
    """``name``'s spec with its policy from ``[supervision]`` and ``[supervision.<name>]``."""
    policy = settings.supervision.policy(name)
    roles = [c.role for c in children if c.role in STANDBY_ROLES]
    if not roles:  # this node hosts none of the role: no standbys of it either
        policy = replace(policy, standby=0)
    # Members keep standbys of the replicated role even where this node hosts none of it.
    roles += [t.role for t in templates if t.role in STANDBY_ROLES]
    return SupervisorSpec(
        name=name, children=children,
        policy=policy,  # standby is 0 but for ingest and serving (config.supervision)
        heartbeat_interval_s=settings.supervision.heartbeat_interval_s,
        standby_role=roles[0] if roles else None,
        replica_templates=templates,
    )


def _worker(settings: Settings, supervisor: str, name: str, role: str,
            actor_class: str) -> ChildSpec:
    """A leaf under ``supervisor``: batch roles get that supervisor's batch timeout."""
    batch = settings.supervision.policy(supervisor).batch_heartbeat_timeout_s
    timeout = batch if role in BATCH_ROLES else None
    return ChildSpec(name, role, actor_class, heartbeat_timeout_s=timeout)


def _sub(settings: Settings, name: str, children: tuple[ChildSpec, ...],
         templates: tuple[ChildSpec, ...] = ()) -> ChildSpec:
    return ChildSpec(name=name, role="supervisor", actor_class=SUPERVISOR_CLASS,
                     spec=_supervisor(settings, name, children, templates))


def system_tree(settings: Settings) -> SupervisorSpec:
    """The daemon's tree: ingest, learning and serving each under their own supervisor,
    so a failure is contained where it happens. The leader's own replicas are here (as
    many as its settings say, if its ``[cluster] roles`` host them); members' replicas are
    added by their supervisors when they join (``SupervisorSpec.replica_templates``)."""
    roles = settings.cluster.roles
    collector = _worker(settings, "ingest", "collector", "collector", "actors.collector.Collector")
    collectors = tuple(replace(collector, name=f"collector-{i}")
                       for i in range(1, settings.ingest.collectors + 1)
                       if "collector" in roles)
    ingest = _sub(
        settings,
        "ingest",
        (
            *collectors,
            _worker(settings, "ingest", "feature-generator", "feature_generator",
                    "actors.feature_generator.FeatureGenerator"),
        ),
        (collector,),
    )
    learning = _sub(
        settings,
        "learning",
        (
            _worker(settings, "learning", "learner", "learner", "actors.learner.Learner"),
            _worker(settings, "learning", "publisher", "publisher", "actors.publisher.Publisher"),
        ),
    )
    predictor = _worker(settings, "serving", "predictor", "predictor", "actors.predictor.Predictor")
    predictors = tuple(replace(predictor, name=f"predictor-{i}")
                       for i in range(1, settings.predict.replicas + 1)
                       if "predictor" in roles)
    serving = _sub(settings, "serving", predictors, (predictor,))
    return _supervisor(settings, "root", (ingest, learning, serving))
