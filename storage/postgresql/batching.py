"""When a lone node's group-commit leader sends its batch: as soon as the pipeline has room
("eager"), or once the callers the batch before answered are back in line too ("gather",
`GATHER_WAIT` at most). Which is faster depends on the machine's spare CPU, so the writer
measures both and keeps the faster (`BatchPolicy`).

Measured here (`python -m benchmarks.postgresql_contention`: 16 sessions, 3 s figures, the
modes and the plain table alternated, medians of three rounds):
- on an idle 2-core machine eager made 6.3-9.0k appends/s, gathering 3.9-7.2k/s: eager keeps
  two batches in the pipeline, so the server writes one while the client prepares the next;
- with one CPU-bound process beside it, gathering made 6.5-6.9k/s and eager 4.1-4.4k/s:
  batches of ~15 instead of ~5 cost a quarter less CPU per append, and with no CPU to spare
  the overlap is worth less than that; with two, 2.1-2.8k/s against 1.5-1.6k/s.
Neither can be told from the other by a figure the writer sees for free (the pipeline's
turnaround is about the same in the faster mode either way), so the policy tries the other
mode now and then and compares the mean time appends spent in `write`. Where the two are the
same thing (a lone caller, sparse appends: nobody to gather) a try teaches nothing: only a
try in which gathering leaders did wait for someone changes the mode or lengthens the hold
(else a difference in the times is noise, and acting on it would leave the node in a mode
it never measured into the next burst).

This module is pure: no threads, no clock of its own; the writer calls it under its lock.
"""

from __future__ import annotations

WINDOW = 0.1
"""Seconds per measured window."""
PAIRS = 3
"""A try alternates the two modes window by window, this many windows each, starting with
the other one (alternating cancels the machine's load drifting during the try)."""
HOLD = 10
"""Windows kept in the chosen mode before the next try; doubled after each try that kept
the chosen mode, up to LONGEST_HOLD, and back to HOLD after a switch (so a steady machine
spends three windows in the slower mode every 1.6 s at first, every 8.6 s in the end)."""
LONGEST_HOLD = 80
DRIFT = 1.5
"""A try starts at once, whatever the hold, when the chosen mode's mean time in two windows
in a row is this many times away from what it was in the last try, the same way (the machine
or the load changed: a CPU-bound process started, sixteen callers came where there was one).
Two windows, so that one slow spell or a burst's first appends do not start one."""
MARGIN = 0.15
"""How much lower the other mode's mean time must be to be taken: the times of two 0.3 s
spells in one mode differ by up to ~15 % on a shared machine, and where gathering is worth
having it cuts the mean by a third or more (measured: with 5 % an idle machine was taken for
a busy one now and then and gathered, a fifth slower)."""
MIN_SAMPLES = 32
"""Appends a window needs to count."""


class BatchPolicy:
    """Whether a lone node's leaders gather, from the time appends spend in `write` under
    each mode; `mode` "eager" or "gather" fixes it."""

    def __init__(self, mode: str = "adaptive", *, window: float = WINDOW, pairs: int = PAIRS,
                 hold: int = HOLD, longest_hold: int = LONGEST_HOLD, drift: float = DRIFT,
                 margin: float = MARGIN, min_samples: int = MIN_SAMPLES) -> None:
        if mode not in ("adaptive", "eager", "gather"):
            raise ValueError(f"unknown batching mode {mode!r}: adaptive, eager or gather")
        self.mode = mode
        self.gathering = mode == "gather"
        """The decision leaders follow now."""
        self.switches = 0
        """How many tries found the other mode faster and took it."""
        self.tries = 0
        """How many tries were made."""
        self._chosen = self.gathering
        self._window = window
        self._pairs = pairs
        self._shortest_hold = self._hold = hold
        self._longest_hold = longest_hold
        self._drift = drift
        self._margin = margin
        self._min_samples = min_samples
        self._started: float | None = None
        self._last = 0.0
        """When the last append was recorded."""
        self._total = 0.0
        self._count = 0
        self._held = 0
        """Windows with enough appends measured in the chosen mode since the last try."""
        self._trial: list[bool] = []
        """The modes of a try's windows still to come (empty: no try under way)."""
        self._trying = False
        self._sums = {False: [0.0, 0], True: [0.0, 0]}
        """gathering -> [seconds, appends] measured under it during a try"""
        self._waits = 0
        """How many times a leader waited to gather during a try."""
        self._reference: float | None = None
        """The chosen mode's mean time in the last try that taught something."""
        self._last_mean: float | None = None
        """The chosen mode's mean time in the window before this one (while holding)."""

    def record(self, seconds: float, now: float) -> None:
        """One append spent `seconds` in `write` and left it at `now` (monotonic)."""
        if self.mode != "adaptive":
            return
        if self._started is None or now - self._last > self._window:
            # the first append, or the first after a pause: a window starts with it (the
            # one before, cut by the pause, is dropped, and so is what drift had seen)
            self._started, self._total, self._count = now, 0.0, 0
            self._last_mean = None
        self._last = now
        self._total += seconds
        self._count += 1
        if now - self._started >= self._window:
            self._close_window(now)

    def note_wait(self) -> None:
        """A gathering leader waited for callers to come back."""
        self._waits += 1

    def _close_window(self, now: float) -> None:
        total, count = self._total, self._count
        self._started, self._total, self._count = now, 0.0, 0
        if not self._trying:
            if count >= self._min_samples:
                self._held += 1
                self._watch_drift(total / count)
            if self._held >= self._hold:
                self._held = 0
                self._trying = True
                self.tries += 1
                self._sums = {False: [0.0, 0], True: [0.0, 0]}
                self._waits = 0
                self._trial = [not self._chosen, self._chosen] * self._pairs
                self.gathering = self._trial.pop(0)
            return
        measured = self._sums[self.gathering]
        measured[0] += total
        measured[1] += count
        if self._trial:
            self.gathering = self._trial.pop(0)
            return
        self._trying = False
        self._decide()

    def _watch_drift(self, mean: float) -> None:
        """Cut the hold short when the chosen mode's times moved far from the last try's."""
        last, self._last_mean = self._last_mean, mean
        if last is None or self._reference is None:
            return
        reference, drift = self._reference, self._drift
        if min(last, mean) > reference * drift or max(last, mean) * drift < reference:
            self._held = self._hold
            self._last_mean = None

    def _decide(self) -> None:
        """At the end of a try: take the other mode if its mean was lower by the margin; learn
        nothing from a try with too few appends, or in which nobody was gathered (then the two
        modes were the same thing)."""
        other_seconds, other_count = self._sums[not self._chosen]
        chosen_seconds, chosen_count = self._sums[self._chosen]
        self.gathering = self._chosen
        self._last_mean = None
        if min(other_count, chosen_count) < self._min_samples * self._pairs or \
                self._waits < self._pairs:
            return
        self._reference = chosen_seconds / chosen_count
        if other_seconds / other_count < chosen_seconds / chosen_count * (1 - self._margin):
            self._chosen = self.gathering = not self._chosen
            self._reference = other_seconds / other_count
            self.switches += 1
            self._hold = self._shortest_hold
        else:
            self._hold = min(self._hold * 2, self._longest_hold)
