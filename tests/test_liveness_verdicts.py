"""The heartbeat's verdict on a child, and the root's directory: pure, no actor system."""

from __future__ import annotations

from messages.protocol import ActorInfo
from supervision.child import Child
from supervision.directory import Directory
from supervision.liveness import judge
from supervision.spec import ChildSpec

TIMEOUT_S, INTERVAL_S = 3.0, 0.5


def child(**state: object) -> Child:
    c = Child(ChildSpec("predictor-1", "predictor", "actors.predictor.Predictor"))
    c.state, c.address, c.last_seen = "running", object(), 100.0
    for key, value in state.items():
        setattr(c, key, value)
    return c


def test_a_child_that_answered_recently_is_pinged_once_then_left_alone() -> None:
    assert judge(child(), 100.5, TIMEOUT_S, INTERVAL_S) == "ping"
    assert judge(child(ping_sent=100.5), 101.0, TIMEOUT_S, INTERVAL_S) == "wait"
    # A Ping unanswered for a third of the timeout is sent again (one may have been lost).
    assert judge(child(ping_sent=100.5), 101.6, TIMEOUT_S, INTERVAL_S) == "ping"


def test_a_child_silent_past_its_timeout_is_killed() -> None:
    assert judge(child(ping_sent=101.0), 103.1, TIMEOUT_S, INTERVAL_S) == "kill"


def test_a_killed_child_awaits_its_exit_report_then_is_given_up_on() -> None:
    killed = child(state="unresponsive", last_seen=100.0)
    assert judge(killed, 104.0, TIMEOUT_S, INTERVAL_S) == "await_report"
    assert judge(killed, 106.1, TIMEOUT_S, INTERVAL_S) == "exit_not_reported"


def test_a_process_gone_without_a_report_is_handled_a_tick_later() -> None:
    gone = child(gone_since=101.0)
    assert judge(gone, 101.2, TIMEOUT_S, INTERVAL_S) == "await_report"
    assert judge(gone, 101.5, TIMEOUT_S, INTERVAL_S) == "exit_not_reported"


def info(name: str, state: str = "running", role: str = "predictor",
         supervisor: str = "serving") -> ActorInfo:
    return ActorInfo(name, role, 1, 0, state, supervisor,
                     address=None if state not in ("running", "standby") else f"@{name}")


def test_standbys_hear_their_peers_news_but_are_never_sent_work() -> None:
    directory = Directory()
    for actor in (info("predictor-1"), info("predictor-standby-1", "standby"),
                  info("learner", role="learner", supervisor="learning")):
        directory.record(actor)
    assert dict(directory.peers().by_role)["predictor"] == ("@predictor-1",
                                                           "@predictor-standby-1")
    assert directory.live("predictor") == ["@predictor-1"]


def test_a_supervisor_that_stops_running_takes_its_subtree_along() -> None:
    directory = Directory()
    for actor in (info("predictor-1"), info("predictor-standby-1", "standby"),
                  info("learner", role="learner", supervisor="learning")):
        directory.record(actor)
    directory.record(info("serving", "restarting", role="supervisor", supervisor="rml-root"))
    states = {a.name: a.state for a in directory.actors()}
    assert states["predictor-1"] == states["predictor-standby-1"] == "restarting"
    assert states["learner"] == "running"
    assert dict(directory.peers().by_role) == {"learner": ("@learner",)}
