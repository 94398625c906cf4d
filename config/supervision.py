"""``[supervision]``: every supervisor's default policy, and one table per supervisor.

The flat keys are every supervisor's defaults; ``[supervision.root|ingest|learning|
serving]`` tables override them for one supervisor (``RML_SUPERVISION_SERVING_STANDBY``
from the environment). A bad value is refused naming the table it comes from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from config.errors import ConfigError

__all__ = [
    "POLICY_KEYS",
    "STANDBY_SUPERVISORS",
    "STRATEGIES",
    "SUPERVISORS",
    "SupervisionSettings",
    "SupervisorPolicy",
    "policy_table",
    "validate_supervision",
]

#: The supervisors of the tree, each of which may override the ``[supervision]`` policy
#: in a table of its own (``[supervision.serving]``).
SUPERVISORS = ("root", "ingest", "learning", "serving")
#: The keys such a table may set.
POLICY_KEYS = ("strategy", "max_restarts", "period_s", "backoff_min_s", "backoff_max_s",
               "backoff_reset_s", "heartbeat_timeout_s", "batch_heartbeat_timeout_s", "standby")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
#: The supervisors of replicated roles (collectors, predictors), which may keep standbys.
STANDBY_SUPERVISORS = ("ingest", "serving")


@dataclass(frozen=True, slots=True)
class SupervisorPolicy:
    """One supervisor's resolved policy: its own table over the ``[supervision]`` defaults."""

    strategy: str
    max_restarts: int
    period_s: float
    backoff_min_s: float
    backoff_max_s: float
    backoff_reset_s: float  # a child that ran this long before failing had a stable run
    heartbeat_timeout_s: float  # for its hot children (and sub-supervisors)
    batch_heartbeat_timeout_s: float  # for its batch children (learner, feature generator, ...)
    standby: int  # warm spares of its replicated role (predictor, collector), promoted on a death


@dataclass(frozen=True, slots=True)
class SupervisionSettings:
    """Restart policy: at most ``max_restarts`` in ``period_s``, with backoff between."""

    strategy: str = field(default="one_for_one", metadata={
        "doc": "`one_for_one`, `one_for_all`, `rest_for_one`"})
    max_restarts: int = field(default=10, metadata={
        "doc": "restart intensity: at most this many restarts within `period_s` across all "
               "of a supervisor's children, then it gives up and its parent restarts it"})
    period_s: float = field(default=30.0, metadata={
        "doc": "the window of `max_restarts`"})
    backoff_min_s: float = field(default=0.0, metadata={
        "doc": "the shortest backoff between restarts (doubling, with jitter)"})
    backoff_max_s: float = field(default=2.0, metadata={
        "doc": "the longest backoff between restarts"})
    # Akka's autoReset: the backoff paces crash loops (a child that fails within this
    # long of its start); a child that ran longer had a stable run, so its next restart
    # waits only backoff_min_s. Intensity (max_restarts in period_s) bounds the rest.
    backoff_reset_s: float = field(default=1.0, metadata={
        "doc": "a child that ran this long before failing restarts after `backoff_min_s` only"})
    # Liveness: a supervisor pings each running child every ``heartbeat_interval_s``; a
    # child silent for longer than its timeout is SIGKILLed by pid and restarted. A child
    # answers between two messages, so the timeout must exceed its longest handler: the
    # hot roles (collectors, predictors, supervisors) never block theirs, while the batch
    # roles (learner training, feature generator catching up, publisher judging) may
    # work for seconds inside one handler and get ``batch_heartbeat_timeout_s``.
    heartbeat_interval_s: float = field(default=0.5, metadata={
        "doc": "how often a supervisor pings each child (every supervisor: no per-supervisor "
               "override)"})
    heartbeat_timeout_s: float = field(default=3.0, metadata={
        "doc": "a collector, predictor or supervisor silent this long is killed by pid and "
               "replaced (at least twice `heartbeat_interval_s`)"})
    batch_heartbeat_timeout_s: float = field(default=120.0, metadata={
        "doc": "the same for the learner, feature generator and publisher, whose handlers can "
               "run for seconds"})
    standby: int = field(default=0, metadata={
        "doc": "warm spares kept by the ingest (collectors) and serving (predictors) "
               "supervisors (0..4)"})
    root: tuple[tuple[str, Any], ...] = field(default=(), metadata={
        "doc": "the root supervisor's own policy"})
    ingest: tuple[tuple[str, Any], ...] = field(default=(), metadata={
        "doc": "the ingest supervisor's own policy (collectors, feature generator)"})
    learning: tuple[tuple[str, Any], ...] = field(default=(), metadata={
        "doc": "the learning supervisor's own policy (learner, publisher)"})
    # A warm spare predictor: a killed one is replaced by promoting it (~ms), not by a
    # fork and a cold start (~70 ms).
    serving: tuple[tuple[str, Any], ...] = field(default=(("standby", 1),), metadata={
        "doc": "the serving supervisor's own policy (predictors; one warm standby by "
               "default)"})

    def policy(self, supervisor: str) -> SupervisorPolicy:
        """``supervisor``'s policy: its own table over the defaults above."""
        values = {key: getattr(self, key) for key in POLICY_KEYS}
        if supervisor not in STANDBY_SUPERVISORS:
            values["standby"] = 0  # nothing of theirs to keep warm
        values.update(dict(getattr(self, supervisor)) if supervisor in SUPERVISORS else {})
        return SupervisorPolicy(**values)


Coerce = Callable[[str, Any, Any, bool], Any]


def policy_table(section: SupervisionSettings, prefix: str,
                 current: tuple[tuple[str, Any], ...], values: Any, from_env: bool,
                 coerce: Coerce) -> tuple[tuple[str, Any], ...]:
    """One supervisor's overrides, merged over the ones it had, each key checked
    (``coerce(key, raw, default, from_env)`` is the settings loader's)."""
    if not isinstance(values, Mapping):
        raise ConfigError(prefix, "expected a table")
    merged = dict(current)
    for name, raw in values.items():
        if name not in POLICY_KEYS:
            raise ConfigError(f"{prefix}.{name}", "unknown key")
        merged[name] = coerce(f"{prefix}.{name}", raw, getattr(section, name), from_env)
    return tuple(sorted(merged.items()))


def validate_supervision(sup: SupervisionSettings) -> None:
    """The defaults, then each supervisor's resolved policy."""
    if sup.heartbeat_interval_s <= 0:
        raise ConfigError("supervision.heartbeat_interval_s", "must be greater than 0")
    defaults = SupervisorPolicy(**{key: getattr(sup, key) for key in POLICY_KEYS})
    _validate_policy("supervision", defaults, set(POLICY_KEYS), sup, standby_role=True)
    for name in SUPERVISORS:
        _validate_policy(f"supervision.{name}", sup.policy(name), set(dict(getattr(sup, name))),
                         sup, standby_role=name in STANDBY_SUPERVISORS)


def _validate_policy(prefix: str, p: SupervisorPolicy, own: set[str], sup: SupervisionSettings,
                     standby_role: bool) -> None:
    """One supervisor's policy; an error names the table the bad value comes from (its
    own keys are ``own``; the rest it inherits from ``[supervision]``)."""
    def key(name: str) -> str:
        """The dotted key a bad ``name`` was set under."""
        return f"{prefix}.{name}" if name in own else f"supervision.{name}"

    if p.strategy not in STRATEGIES:
        raise ConfigError(key("strategy"), f"must be one of {', '.join(STRATEGIES)}")
    if p.max_restarts < 0:
        raise ConfigError(key("max_restarts"), "must be at least 0")
    if p.period_s <= 0:
        raise ConfigError(key("period_s"), "must be greater than 0")
    if p.backoff_min_s < 0:
        raise ConfigError(key("backoff_min_s"), "must be at least 0")
    if p.backoff_max_s < p.backoff_min_s:
        if "backoff_min_s" in own and "backoff_max_s" not in own:
            raise ConfigError(key("backoff_min_s"), "must be at most backoff_max_s")
        raise ConfigError(key("backoff_max_s"), "must be at least backoff_min_s")
    if p.backoff_reset_s < 0:
        raise ConfigError(key("backoff_reset_s"), "must be at least 0")
    for name in ("heartbeat_timeout_s", "batch_heartbeat_timeout_s"):
        if getattr(p, name) < 2 * sup.heartbeat_interval_s:
            raise ConfigError(key(name), "must be at least twice heartbeat_interval_s")
    if not 0 <= p.standby <= 4:
        raise ConfigError(key("standby"), "must be in 0..4")
    if p.standby and not standby_role:
        raise ConfigError(key("standby"), "only the ingest and serving supervisors keep "
                                          "standbys (of collectors and predictors)")
