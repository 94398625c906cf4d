"""Messages between actors (and from Python services through Thespian).

Nouns are facts or answers, past tense are events, imperatives are commands.
Every request that expects an answer carries a ``correlation_id`` and every
answer repeats it. All are frozen, slotted dataclasses of immutable values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Activate",
    "ActorInfo",
    "ChildUp",
    "CollectionSwitched",
    "FactsNoted",
    "FactsRecorded",
    "FeatureRows",
    "FeatureRowsNoted",
    "Forwarded",
    "MessageFailed",
    "Init",
    "NodeInfo",
    "Nodes",
    "EndProcesses",
    "EndStaleWorkers",
    "LeaveAccepted",
    "LeaveRequest",
    "StaleWorkersEnded",
    "ModelCandidate",
    "ModelPublished",
    "Peers",
    "Ping",
    "Pong",
    "PredictRequest",
    "Prediction",
    "PredictionError",
    "Ready",
    "StartSystem",
    "StatusReport",
    "StatusRequest",
    "StoppingNormally",
    "SystemStarted",
    "TrainRequest",
    "WorkerNote",
    "TrainResult",
    "RollbackRequest",
    "RollbackResult",
    "ShadowServed",
    "ShadowStarted",
]


# --- lifecycle and supervision -------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartSystem:
    """Launcher -> root supervisor: build the tree from these settings."""

    settings: Any  # config.settings.Settings (frozen)
    correlation_id: str


@dataclass(frozen=True, slots=True)
class SystemStarted:
    """Root -> launcher: every actor answered (or why not)."""

    correlation_id: str
    ok: bool
    actors: tuple[ActorInfo, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class Init:
    """Supervisor -> child: who you are and the settings to run with.

    ``spec`` is set only for a child that is itself a supervisor.
    """

    name: str
    role: str
    settings: Any  # config.settings.Settings
    correlation_id: str
    spec: Any = None  # supervision.spec.SupervisorSpec | None
    standby: bool = False  # start and load, but do not serve until ``Activate``


@dataclass(frozen=True, slots=True)
class Activate:
    """Supervisor -> warm standby: you are now ``name``; serve, then answer ``Ready``."""

    name: str
    role: str
    correlation_id: str


@dataclass(frozen=True, slots=True)
class Ready:
    """Child -> supervisor: initialised (state rebuilt from the stores) and serving."""

    name: str
    role: str
    pid: int
    correlation_id: str


@dataclass(frozen=True, slots=True)
class ActorInfo:
    """One actor as ``status`` shows it."""

    name: str
    role: str
    pid: int
    restarts: int
    state: str  # "starting" | "running" | "restarting" | "stopped" | "failed"
    supervisor: str
    address: Any = field(default=None, compare=False)
    node: str = ""  # the node its current incarnation runs on ("" : none)
    # What the actor itself reports for status (``WorkerNote``), e.g. ``("mqtt", {...})``.
    notes: tuple[tuple[str, Any], ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class WorkerNote:
    """Worker -> its supervisor (up to the root's directory): something ``status`` shows
    of it (its MQTT connection), sent when it changes."""

    key: str
    value: Any  # plain, immutable values (a tuple of pairs for a mapping)


@dataclass(frozen=True, slots=True)
class ChildUp:
    """Supervisor -> parent (up to the root): a child's current state changed."""

    info: ActorInfo


@dataclass(frozen=True, slots=True)
class Peers:
    """Root -> every worker: live addresses by role, sent whenever they change."""

    by_role: tuple[tuple[str, tuple[Any, ...]], ...]

    def of(self, role: str) -> tuple[Any, ...]:
        """The live addresses of ``role`` (empty when none is up)."""
        for name, addrs in self.by_role:
            if name == role:
                return addrs
        return ()


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; the answer is a ``Pong`` with the same id."""

    correlation_id: str


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to ``Ping``."""

    correlation_id: str
    name: str
    pid: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node of the actor system as the root sees it (``status``, placement).

    ``state``: ``joining`` (its admin joined the convention; its agent not yet answered),
    ``up`` (replicas may be placed there), ``down`` (silent or gone: its replicas are
    re-placed), ``refused`` (``problem`` says why: a name taken, another store).
    """

    name: str
    roles: tuple[str, ...]
    leader: bool
    state: str
    joined_at_ms: int
    last_seen_ms: int
    address: str = ""  # its admin's address, as text
    problem: str = ""
    # The node's own settings (ports, tokens, store, replica counts), from its capabilities:
    # what the actors placed on it run with.
    settings: Any = field(default=None, compare=False, repr=False)
    agent: Any = field(default=None, compare=False, repr=False)  # its NodeAgent's address


@dataclass(frozen=True, slots=True)
class Nodes:
    """Root -> supervisors: the nodes, whenever one joins, goes or comes back."""

    nodes: tuple[NodeInfo, ...]

    def get(self, name: str) -> NodeInfo | None:
        """The node called ``name``, if known."""
        return next((n for n in self.nodes if n.name == name), None)


@dataclass(frozen=True, slots=True)
class EndProcesses:
    """Supervisor -> a member's NodeAgent: SIGKILL these processes of your node (a hung
    remote child: its supervisor cannot kill a pid on another host)."""

    pids: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class LeaveRequest:
    """A member's ``rml stop`` -> root: this node is leaving; place its replicas elsewhere
    (they keep serving until the node stops: make before break)."""

    node: str
    correlation_id: str


@dataclass(frozen=True, slots=True)
class LeaveAccepted:
    """Root -> the member leaving: its replicas are being placed elsewhere."""

    correlation_id: str
    node: str


@dataclass(frozen=True, slots=True)
class EndStaleWorkers:
    """Root -> a NodeAgent whose node (re)joins: end workers left from an earlier tree (a
    leader that died, a partition healed) before any replica is placed there again."""

    correlation_id: str


@dataclass(frozen=True, slots=True)
class StaleWorkersEnded:
    """NodeAgent -> root: done; the node may take replicas."""

    correlation_id: str
    pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Ask the root for the supervision tree."""

    correlation_id: str


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The supervision tree as the root sees it."""

    correlation_id: str
    actors: tuple[ActorInfo, ...]
    started_at_ms: int
    dead_letters: int = 0
    nodes: tuple[NodeInfo, ...] = ()


# --- data flow -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FactsRecorded:
    """Collector -> feature generator and learner: facts are committed up to here.

    A hint only: the facts themselves are in the FactStore; receivers read past
    their own cursor.
    """

    collector: str
    readings: int
    outcomes: int
    sequence: int = 0  # answered with ``FactsNoted(sequence)``: see ``actors.hints``


@dataclass(frozen=True, slots=True)
class FactsNoted:
    """Receiver -> collector: hint ``sequence`` arrived; another may come."""

    sequence: int


@dataclass(frozen=True, slots=True)
class FeatureRows:
    """Feature generator -> predictors: the rows written since this receiver's last
    acknowledged push, newest per (collection, location), each as ``(collection_id,
    location_id, as_of_ms, values, computed_at_ms)``; every row written before ``sent_at``
    (the generator's wall clock) is in it or an earlier push. ``reload``: read the latest
    rows from the store before taking these (a receiver new to ``feed``, the generator's
    incarnation, or one that fell too far behind). Answered with ``FeatureRowsNoted``."""

    feed: str
    version: int
    rows: tuple[tuple[int, int, int, tuple[float, ...], int], ...]
    sent_at: float
    reload: bool = False


@dataclass(frozen=True, slots=True)
class FeatureRowsNoted:
    """Predictor -> feature generator: push ``version`` is taken; another may come."""

    version: int


@dataclass(frozen=True, slots=True)
class CollectionSwitched:
    """Feature generator -> learner and predictors: the active feature collection changed.

    A hint: the switch and the invalid features are in the feature store.
    """

    previous_id: int | None
    collection_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class TrainRequest:
    """Ask the learner for a training run now (``job`` overrides the configured one)."""

    correlation_id: str
    job: Any = None  # config.job.JobConfiguration | None
    force: bool = False


@dataclass(frozen=True, slots=True)
class ModelCandidate:
    """Learner -> publisher: a registered candidate version awaiting the gate."""

    correlation_id: str
    version: int
    force: bool = False
    reply_to: Any = None  # who asked for the run (``rml train``), answered by the publisher


@dataclass(frozen=True, slots=True)
class TrainResult:
    """Answer to ``TrainRequest`` (and the publisher's verdict on its candidate)."""

    correlation_id: str
    version: int | None
    published: bool
    metrics: tuple[tuple[str, float], ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ModelPublished:
    """Publisher -> predictors: a new champion is in the registry."""

    version: int
    feature_collection_id: int


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """Ask for a prediction: by ``location_id`` (latest online features) or ``features``."""

    correlation_id: str
    location_id: int | None = None
    features: tuple[tuple[str, float], ...] | None = None
    deadline_ms: float | None = None  # None: the predictor's ``[predict] deadline_ms``


@dataclass(frozen=True, slots=True)
class Prediction:
    """A prediction; ``fallback`` marks an answer from the fallback model."""

    correlation_id: str
    label: bool
    probability: float
    model_version: int
    feature_collection_id: int
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class PredictionError:
    """Why no prediction could be made (HTTP 400 or 503 at the edge)."""

    correlation_id: str
    reason: str
    status: int = 400


@dataclass(frozen=True, slots=True)
class Forwarded:
    """Root -> predictor: a request from outside; answer ``reply_to`` directly."""

    message: Any
    reply_to: Any


@dataclass(frozen=True, slots=True)
class MessageFailed:
    """Actor -> its supervisor: a message failed twice (a poison message) and was not applied.

    The supervisor records it in the dead-letter table; nothing is dropped silently.
    """

    actor: str
    message_type: str
    message: str
    error: str


@dataclass(frozen=True, slots=True)
class StoppingNormally:
    """Worker -> its supervisor: I am exiting on purpose (a ``transient`` child is then not
    restarted). Thespian's ``ChildActorExited`` does not say why a child exited."""

    name: str


# --- registry operations and shadow serving ------------------------------------------


@dataclass(frozen=True, slots=True)
class RollbackRequest:
    """Make a registered version the champion again (``rml rollback``); the publisher answers."""

    correlation_id: str
    version: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RollbackResult:
    """Answer to ``RollbackRequest``: ``ok`` with the champion it replaced, or why not
    (``reason`` starts with a named error: ``unknown_version``, ``artifact_invalid``, ...)."""

    correlation_id: str
    version: int
    ok: bool
    previous_version: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ShadowStarted:
    """Publisher -> predictors: ``version`` serves in shadow for ``requests`` requests.

    A hint: the status is in the registry and the trial in the shadow store.
    """

    version: int
    feature_collection_id: int
    requests: int


@dataclass(frozen=True, slots=True)
class ShadowServed:
    """Predictor -> publisher: the shadow predictions one predictor incarnation (``reporter``)
    made for ``version``, cumulative (so a lost or repeated report changes nothing); sent at
    most a few times a second."""

    reporter: str
    version: int
    served: int
    agreed: int
    errors: int
