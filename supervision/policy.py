"""Restart intensity and backoff, as pure functions of the restart history."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RestartDecision", "backoff_delay", "decide_restart"]


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """Restart after ``delay_s``, or give up and escalate."""

    restart: bool
    delay_s: float
    recent: int  # restarts within the period, this one included


def decide_restart(
    history: Sequence[float],
    now: float,
    *,
    max_restarts: int,
    period_s: float,
    backoff_min_s: float,
    backoff_max_s: float,
    rng: random.Random | None = None,
) -> RestartDecision:
    """Decide on one more restart given the times of earlier ones.

    At most ``max_restarts`` within ``period_s`` (OTP's intensity); past that
    the supervisor escalates. The first restart within a period waits
    ``backoff_min_s``; from the second on the delay doubles (starting from
    ``backoff_min_s``, or 10 ms when that is 0) up to ``backoff_max_s``, with up to
    20% jitter. A stable period (no restart within ``period_s``) resets it.
    """
    recent = sum(1 for t in history if now - t <= period_s) + 1
    if recent > max_restarts:
        return RestartDecision(False, 0.0, recent)
    return RestartDecision(True, backoff_delay(history, now, period_s=period_s,
                                               backoff_min_s=backoff_min_s,
                                               backoff_max_s=backoff_max_s, rng=rng), recent)


def backoff_delay(
    history: Sequence[float],
    now: float,
    *,
    period_s: float,
    backoff_min_s: float,
    backoff_max_s: float,
    rng: random.Random | None = None,
) -> float:
    """How long to wait before one more start, given the times of earlier ones (the
    backoff of ``decide_restart``, without its intensity limit)."""
    recent = sum(1 for t in history if now - t <= period_s) + 1
    if recent == 1 or backoff_max_s <= 0:
        delay = backoff_min_s
    else:
        base = max(backoff_min_s, 0.01)
        delay = min(backoff_max_s, base * 2 ** (recent - 2))
    if delay > 0:
        delay *= 1.0 + 0.2 * (rng or random).random()
        delay = min(delay, backoff_max_s) if backoff_max_s > 0 else delay
    return delay
