"""The launcher's restart policy, on real processes that die, with a clock the test moves."""

import sys

from workers.launcher import Launcher, ProcessSpec

WEEK = 7 * 24 * 3600.0


class Clock:
    """Monotonic seconds that pass only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def crashing_launcher(clock: Clock) -> Launcher:
    spec = ProcessSpec("crasher", [sys.executable, "-c", "raise SystemExit(3)"])
    launcher = Launcher([spec], ready_message=None, backoff_seconds=1.0, clock=clock)
    launcher._start(launcher.children[0])
    return launcher


def crash(launcher: Launcher, clock: Clock) -> float | None:
    """Let the running process die (it exits at once), show it to the launcher; the back-off it
    chose, or None when it gave up. Then the restart, once its back-off has passed."""
    child = launcher.children[0]
    old_pid = child.proc.pid
    assert child.proc.wait(30) == 3
    launcher._watch()
    if child.given_up:
        return None
    delay = child.restart_at - clock()
    clock.advance(delay)
    launcher._watch()
    assert child.restart_at is None and child.proc.pid != old_pid  # a new process was started
    return delay


def test_a_process_that_dies_once_a_week_is_restarted_every_time():
    clock = Clock()
    launcher = crashing_launcher(clock)
    for week in range(6):
        assert crash(launcher, clock) == 1.0, f"week {week}: back-off starts again at 1 s"
        clock.advance(WEEK)
    child = launcher.children[0]
    assert not child.given_up and child.restarts == 6
    assert launcher.process_table()["crasher"]["state"] != "given_up"
    child.proc.wait(30)


def test_a_process_that_keeps_dying_is_given_up_on_after_three_restarts_within_a_minute():
    clock = Clock()
    launcher = crashing_launcher(clock)
    assert [crash(launcher, clock) for _ in range(3)] == [1.0, 2.0, 4.0]
    clock.advance(50)  # the fourth death, 57 s after the first restart
    assert crash(launcher, clock) is None
    assert launcher.process_table()["crasher"] == {"state": "given_up", "restarts": 3,
                                                   "pid": launcher.children[0].proc.pid}


def test_restarts_older_than_the_window_no_longer_count():
    clock = Clock()
    launcher = crashing_launcher(clock)
    start = clock()
    assert [crash(launcher, clock) for _ in range(3)] == [1.0, 2.0, 4.0]  # restarts decided at +0, +1, +3 s
    clock.advance(60.5 - (clock() - start))  # 60.5 s after the first: two restarts left in the window
    assert crash(launcher, clock) == 4.0
    clock.advance(60)  # a quiet minute: none left
    assert crash(launcher, clock) == 1.0
    assert not launcher.children[0].given_up and launcher.children[0].restarts == 5
    launcher.children[0].proc.wait(30)
