"""The PostgreSQL writer's batching policy (`storage/postgresql/batching.py`): which of eager
sending and gathering a lone node's leaders follow, from the times appends spend in `write`.
Pure: these tests feed it times on a clock of their own."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chatledger.storage.postgresql.batching import BatchPolicy

WINDOW = 0.125
PER_WINDOW = 64
"""Appends per window: with these, every time below is exact in binary."""


class Driver:
    """Appends recorded into a policy, evenly spaced, each taking the time that
    `seconds(gathering)` says for the mode the policy is in when it is recorded; while it
    gathers, its leaders wait for someone before each append if `gathered`. A window's first
    append closes the policy's window before it (it left `write` at its end)."""

    def __init__(self, policy: BatchPolicy, *, gathered: bool = True) -> None:
        self.policy = policy
        self.gathered = gathered
        self.appends = 0
        self.modes: list[bool] = []
        """The mode of each window driven, in order."""
        self.tries: list[int] = []
        """How many tries the policy had made at the start of each window."""

    def windows(self, count: int, seconds: Callable[[bool], float],
                per_window: int = PER_WINDOW) -> None:
        """Drive `count` windows."""
        for _ in range(count):
            for number in range(per_window):
                now = self.appends * WINDOW / per_window
                if self.gathered and self.policy.gathering:
                    self.policy.note_wait()
                self.policy.record(seconds(self.policy.gathering), now)
                self.appends += 1
                if number == 0:
                    self.modes.append(self.policy.gathering)
                    self.tries.append(self.policy.tries)


def gathering_faster(gathering: bool) -> float:
    """A machine with no CPU to spare: gathering takes a third less time."""
    return 0.002 if gathering else 0.003


def eager_faster(gathering: bool) -> float:
    """An idle machine: eager sending takes a third less time."""
    return 0.003 if gathering else 0.002


def test_a_fixed_mode_never_changes() -> None:
    for mode, expected in (("eager", False), ("gather", True)):
        driver = Driver(BatchPolicy(mode, window=WINDOW))
        driver.windows(300, eager_faster if expected else gathering_faster)
        assert set(driver.modes) == {expected}
        assert driver.policy.tries == 0


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown batching mode 'fast'"):
        BatchPolicy("fast")


def test_it_starts_eager_and_takes_gathering_when_gathering_is_faster() -> None:
    policy = BatchPolicy(window=WINDOW)
    driver = Driver(policy)
    assert not policy.gathering
    driver.windows(10, gathering_faster)
    assert driver.modes == [False] * 10  # held for HOLD windows first
    driver.windows(7, gathering_faster)
    assert driver.modes[10:] == [True, False] * 3 + [True]  # a try alternates the modes, the
    assert policy.switches == 1 and policy.tries == 1  # other first; then gathering is taken


def test_it_keeps_the_faster_mode_and_tries_the_other_less_and_less_often() -> None:
    policy = BatchPolicy(window=WINDOW)
    driver = Driver(policy)
    driver.windows(500, eager_faster)
    assert policy.switches == 0
    starts = [index for index in range(1, len(driver.tries))
              if driver.tries[index] > driver.tries[index - 1]]  # the windows a try began
    assert starts[0] == 10
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert gaps[:4] == [6 + 20, 6 + 40, 6 + 80, 6 + 80]  # a try's windows, a doubled hold
    assert sum(driver.modes) / len(driver.modes) < 0.05  # under 5 % of the time gathering


def test_when_the_machine_changes_it_follows_at_its_next_try() -> None:
    policy = BatchPolicy(window=WINDOW)
    driver = Driver(policy)
    driver.windows(200, eager_faster)
    assert not policy.gathering
    driver.windows(100, gathering_faster)  # a CPU hog starts: at most LONGEST_HOLD + a try
    assert policy.gathering and policy.switches == 1
    driver.windows(100, eager_faster)  # and stops: back within HOLD windows and a try
    assert not policy.gathering and policy.switches == 2


def test_when_the_chosen_modes_times_move_far_a_try_starts_at_once() -> None:
    """After a long steady spell the hold is LONGEST_HOLD windows; a CPU-bound process that
    starts doubles eager sending's times, and the policy tries and takes gathering within a
    few windows, not at the end of the hold."""
    policy = BatchPolicy(window=WINDOW)
    driver = Driver(policy)
    driver.windows(200, eager_faster)
    tries = policy.tries
    driver.windows(9, lambda gathering: 0.004 if gathering else 0.006)  # 2 windows, a try
    assert policy.tries == tries + 1 and policy.switches == 1 and policy.gathering


def test_one_slow_window_or_a_pause_starts_no_try() -> None:
    policy = BatchPolicy(window=WINDOW)
    driver = Driver(policy)
    driver.windows(200, eager_faster)
    tries = policy.tries
    for _ in range(3):
        driver.windows(1, lambda gathering: 0.010)  # a slow spell of one window
        driver.windows(5, eager_faster)
        driver.appends += 10 * PER_WINDOW  # a pause of ten windows' time
    assert policy.tries == tries and not policy.gathering


def test_a_difference_within_the_margin_changes_nothing() -> None:
    policy = BatchPolicy(window=WINDOW, margin=0.05)
    driver = Driver(policy)
    driver.windows(300, lambda gathering: 0.00198 if gathering else 0.002)  # 1 % apart
    assert policy.tries > 2 and policy.switches == 0 and not policy.gathering


def test_a_try_in_which_nobody_was_gathered_teaches_nothing() -> None:
    """A lone caller: gathering waits for nobody, so it is eager sending, whatever the times
    of its windows say; the hold is not lengthened either."""
    policy = BatchPolicy(window=WINDOW)
    driver = Driver(policy, gathered=False)
    driver.windows((10 + 6) * 4, gathering_faster)  # a hold of HOLD windows and a try, each time
    assert policy.tries == 4 and policy.switches == 0 and not policy.gathering
    driver.gathered = True  # callers come: the next try tells
    driver.windows(10 + 7, gathering_faster)
    assert policy.switches == 1 and policy.gathering


def test_sparse_appends_never_start_a_try() -> None:
    """Windows with fewer appends than MIN_SAMPLES tell nothing: a lone caller, a quiet node."""
    policy = BatchPolicy(window=WINDOW)
    driver = Driver(policy)
    driver.windows(500, gathering_faster, per_window=5)
    assert policy.tries == 0 and not policy.gathering
