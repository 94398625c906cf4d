"""``decide_restart``: restart intensity (OTP's N restarts in T seconds) and backoff with jitter,
reset after a stable run."""

from __future__ import annotations

import random
from typing import Any

import pytest

from supervision.child import Child
from supervision.policy import RestartDecision, decide_restart
from supervision.spec import ChildSpec

NO_JITTER = random.Random()
NO_JITTER.random = lambda: 0.0  # type: ignore[method-assign]
FULL_JITTER = random.Random()
FULL_JITTER.random = lambda: 1.0  # type: ignore[method-assign]


def decide(history: list[float], now: float, rng: random.Random = NO_JITTER,
           **limits: Any) -> RestartDecision:
    policy: dict[str, Any] = {"max_restarts": 3, "period_s": 10.0, "backoff_min_s": 0.1,
                              "backoff_max_s": 1.0}
    return decide_restart(history, now, rng=rng, **(policy | limits))


def restart_sequence(times: list[float], **limits: Any) -> list[RestartDecision]:
    """Decisions for failures at ``times``, remembering each restart that was granted."""
    history: list[float] = []
    decisions = []
    for now in times:
        decision = decide(history, now, **limits)
        decisions.append(decision)
        if decision.restart:
            history.append(now)
    return decisions


def test_restarts_up_to_the_limit_within_the_period_then_escalates() -> None:
    decisions = restart_sequence([0.0, 1.0, 2.0, 3.0], max_restarts=3, period_s=10.0)

    assert [d.restart for d in decisions] == [True, True, True, False]
    assert [d.recent for d in decisions] == [1, 2, 3, 4]


def test_restarts_older_than_the_period_do_not_count_toward_the_limit() -> None:
    decision = decide([0.0, 1.0, 2.0], 11.5, max_restarts=3, period_s=10.0)

    assert decision.restart
    assert decision.recent == 2  # the one at 2.0 and this one; 0.0 and 1.0 are > 10 s ago


def test_zero_max_restarts_escalates_the_first_failure() -> None:
    assert not decide([], 0.0, max_restarts=0).restart


def test_backoff_doubles_with_each_recent_restart_and_is_capped() -> None:
    delays = [d.delay_s for d in restart_sequence(
        [float(t) for t in range(8)], max_restarts=100, period_s=60.0,
        backoff_min_s=0.1, backoff_max_s=1.0)]

    # The first two restarts in a period both wait the minimum; from then on it doubles.
    assert delays == pytest.approx([0.1, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_a_stable_period_resets_the_backoff_to_the_minimum() -> None:
    history = [0.0, 1.0, 2.0, 3.0]
    busy = decide(history, 4.0, max_restarts=100, period_s=10.0)
    calm = decide(history, 3.0 + 10.0 + 0.001, max_restarts=100, period_s=10.0)

    assert busy.delay_s > 0.1
    assert calm.restart and calm.recent == 1
    assert calm.delay_s == pytest.approx(0.1)


def test_without_minimum_backoff_the_first_restart_is_immediate() -> None:
    decisions = restart_sequence([0.0, 0.1, 0.2], max_restarts=10, backoff_min_s=0.0,
                                 backoff_max_s=1.0)

    assert decisions[0].delay_s == 0.0
    assert 0.0 < decisions[1].delay_s < decisions[2].delay_s <= 1.0


@pytest.mark.parametrize("seed", range(20))
def test_jitter_adds_at_most_a_fifth_and_never_passes_the_cap(seed: int) -> None:
    rng = random.Random(seed)
    for history, now in [([], 0.0), ([0.0], 1.0), ([0.0, 1.0], 2.0), ([0.0, 1.0, 2.0], 3.0)]:
        plain = decide(history, now, max_restarts=100)
        jittered = decide(history, now, rng=rng, max_restarts=100)

        assert plain.delay_s <= jittered.delay_s <= min(plain.delay_s * 1.2, 1.0) + 1e-12


def test_full_jitter_is_exactly_a_fifth_below_the_cap() -> None:
    assert decide([], 0.0, rng=FULL_JITTER).delay_s == pytest.approx(0.12)
    assert decide([0.0, 1.0, 2.0], 3.0, rng=FULL_JITTER, max_restarts=100,
                  backoff_max_s=0.25).delay_s == pytest.approx(0.25)


def backoff_after(ran_s: float | None, reset_s: float = 1.0) -> float:
    """The delay a child's next restart would wait, after three restarts in the last ten
    seconds, when it answered Pongs for ``ran_s`` seconds after its Ready (None: never
    ready), then fell silent and was killed seconds later, as a hang is at its deadline."""
    child = Child(spec=ChildSpec("a", "worker", "x.Y"), restart_times=[1.0, 2.0, 3.0])
    now = 10.0
    child.ready_at = 0.0 if ran_s is None else 5.0
    child.last_seen = 5.0 + (ran_s or 0.0)  # its last Pong: later silence is not a run
    delay = child.next_backoff(now, period_s=30.0, reset_s=reset_s, backoff_min_s=0.1,
                               backoff_max_s=5.0, rng=NO_JITTER)
    assert child.restart_times[-1] == now  # this restart now paces the next
    return delay


def test_a_stable_run_resets_the_childs_backoff_as_akkas_auto_reset() -> None:
    assert backoff_after(ran_s=1.5) == pytest.approx(0.1)  # ran long enough: the minimum
    # Hung 0.2 s after its Ready, killed 4.8 s later: still a crash loop, it keeps doubling.
    assert backoff_after(ran_s=0.2) == pytest.approx(0.4)
    assert backoff_after(ran_s=None) == pytest.approx(0.4)  # never became ready
    # 0: every run that got as far as ready counts as stable; only failed starts back off.
    assert backoff_after(ran_s=0.2, reset_s=0.0) == pytest.approx(0.1)
