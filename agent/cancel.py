"""The cancel switch of a run: a threading.Event that also wakes a run loop waiting on it.

Any thread may flip it; the run loop registers a waker (the POSIX pipes ring a bell their
selector waits on), so a cancelled run needs no polling to notice. This module starts nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable


class CancelSwitch(threading.Event):
    """A cancel switch that also wakes the run loop waiting on it, so the loop need not poll.

    It is a threading.Event (`set`, `is_set`, `wait`); `set` also calls every waker a run
    registered with `add_waker`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._wakers: list[Callable[[], None]] = []
        self._wakers_lock = threading.Lock()

    def set(self) -> None:
        """Flip the switch and wake every run waiting on it."""
        super().set()
        with self._wakers_lock:
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def add_waker(self, wake: Callable[[], None]) -> None:
        """Call `wake` when the switch is flipped (at once if it already is)."""
        with self._wakers_lock:
            self._wakers.append(wake)
        if self.is_set():
            wake()

    def remove_waker(self, wake: Callable[[], None]) -> None:
        """Stop calling `wake`."""
        with self._wakers_lock, contextlib.suppress(ValueError):
            self._wakers.remove(wake)
