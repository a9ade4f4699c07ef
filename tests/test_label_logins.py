"""Login throttling on a hand-driven clock: back-off per user and per address, never a lock-out for good."""

from __future__ import annotations

import pytest

from labeling_ui.logins import Backoff, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def guess(throttle: LoginThrottle, user: str, address: str, right: bool = False) -> bool:
    """One login try as the guard makes it: False if refused before the password is looked at."""
    if throttle.attempt(user, address) > 0:
        return False
    if right:
        throttle.succeeded(user, address)
    return True


def test_delays_double_after_the_free_failures_up_to_the_cap() -> None:
    rule = Backoff(free=5, base=1.0, cap=60.0, forget=900.0)
    # failures 0..4 cost nothing; then 1, 2, 4, ... seconds, never more than 60
    assert [rule.delay(n) for n in range(13)] == [0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert rule.delay(10_000) == 60  # no overflow however long an attack runs


def test_guessing_is_refused_then_the_real_user_gets_in_after_the_wait(clock: Clock) -> None:
    throttle = LoginThrottle(clock=clock)
    checked = sum(guess(throttle, "alice", "10.0.0.9") for _ in range(220))  # 220 guesses in one instant
    assert checked == 5  # the free ones; the other 215 never reached the password check
    assert not guess(throttle, "alice", "10.0.0.1", right=True)  # the right password, too early: refused
    assert throttle.attempt("alice", "10.0.0.1") == pytest.approx(1.0)
    clock.now += 1.0
    assert guess(throttle, "alice", "10.0.0.1", right=True)  # after the (capped) wait, the real user is in
    assert throttle.failures("alice", "10.0.0.1") == (0, 0)  # and her failures are cleared


def test_waits_grow_with_each_checked_failure_and_are_capped(clock: Clock) -> None:
    throttle = LoginThrottle(per_user=Backoff(2, 1.0, 5.0, 900.0), clock=clock)
    waited = []
    for _ in range(7):
        start = clock.now
        while not guess(throttle, "bob", "10.0.0.2"):  # a refused try is not counted: probing is free
            clock.now += 0.5
        waited.append(clock.now - start)
    assert waited == [0, 0, 1, 2, 4, 5, 5]  # two free, then 1 s doubling per failure, capped at 5 s


def test_per_address_limit_spans_user_names_and_spares_other_addresses(clock: Clock) -> None:
    throttle = LoginThrottle(per_address=Backoff(20, 1.0, 300.0, 900.0), clock=clock)
    checked = sum(guess(throttle, f"name{i}", "10.0.0.3") for i in range(50))  # one guess per name
    assert checked == 20
    assert not guess(throttle, "carol", "10.0.0.3", right=True)
    assert guess(throttle, "carol", "10.0.0.4", right=True)  # another address is not held back


def test_successes_do_not_throttle_a_shared_address(clock: Clock) -> None:
    throttle = LoginThrottle(clock=clock)
    assert all(guess(throttle, f"user{i}", "10.0.0.5", right=True) for i in range(100))  # one proxy, many people
    assert throttle.failures("user0", "10.0.0.5") == (0, 0)


def test_failures_are_forgotten(clock: Clock) -> None:
    throttle = LoginThrottle(clock=clock)
    for _ in range(5):
        guess(throttle, "dave", "10.0.0.6")
    assert throttle.failures("dave", "10.0.0.6") == (5, 5)
    clock.now += 901
    assert throttle.failures("dave", "10.0.0.6") == (0, 0)
    assert guess(throttle, "dave", "10.0.0.6", right=True)


def test_records_stay_bounded_under_a_name_spray(clock: Clock) -> None:
    throttle = LoginThrottle(clock=clock)
    throttle.MAX_KEYS = 50
    for i in range(60):
        guess(throttle, f"spray{i}", f"10.0.1.{i}")
    assert len(throttle.records) == 120  # nothing is forgotten yet, so nothing may be dropped
    clock.now += 901
    guess(throttle, "late", "10.0.0.8")
    assert set(throttle.records) == {"user:late", "addr:10.0.0.8"}  # the forgotten ones went at the limit
