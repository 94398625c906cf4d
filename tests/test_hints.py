"""Hint flow control: at most one unacknowledged hint per receiver (``actors.hints``)."""

from __future__ import annotations

from actors.hints import HintWindow


class Address:
    """Like Thespian's addresses: equal by value, not hashable."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Address) and other.name == self.name


A, B = Address("learner"), Address("feature-generator")


def test_a_receiver_with_an_unnoted_hint_gets_no_other_until_it_notes_it() -> None:
    window = HintWindow()
    assert window.ready([A, B], 0.0) == [A, B]
    first = window.sent([A, B], 0.0)
    assert window.ready([A, B], 1.0) == []
    window.noted(Address("feature-generator"), first)  # an equal address is the same one
    assert window.ready([A, B], 1.0) == [B]
    second = window.sent([B], 1.0)
    assert second > first and window.waiting() == 2


def test_an_older_acknowledgement_leaves_a_newer_hint_pending() -> None:
    window = HintWindow()
    old = window.sent([A], 0.0)
    window.noted(A, old)
    new = window.sent([A], 1.0)
    window.noted(A, old)
    assert window.ready([A], 2.0) == []
    window.noted(A, new)
    assert window.ready([A], 2.0) == [A]


def test_a_hint_unnoted_for_long_is_assumed_lost_and_another_may_go() -> None:
    window = HintWindow(resend_after_s=30.0)
    window.sent([A], 0.0)
    assert window.ready([A], 29.9) == []
    assert window.ready([A], 30.0) == [A]


def test_receivers_that_are_gone_are_forgotten() -> None:
    window = HintWindow()
    window.sent([A, B], 0.0)
    window.forget_except([B])
    assert window.waiting() == 1 and window.ready([A], 0.1) == [A]


def test_what_a_receiver_was_told_outlives_its_acknowledgement() -> None:
    window = HintWindow()
    assert window.told(A, (0, 0)) == (0, 0)
    sequence = window.sent([A], 0.0, (10, 2))
    window.noted(A, sequence)
    assert window.told(A, (0, 0)) == (10, 2) and window.ready([A], 0.1) == [A]
    window.forget_except([B])
    assert window.told(A, (0, 0)) == (0, 0)
