"""A catch-up-then-live subscription to a store, the same for every store.

It reads through the store's `read_all` in chunks (never holding a read across the
consumer's code), wakes at once on this process's appends (the store's condition), and polls
for other processes' appends.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator

from ..events.model import Recorded

ReadAll = Callable[[int], Iterator[Recorded]]
"""A store's `read_all(from_position)`."""


class Subscription:
    """Iterate to get every record from a position on, blocking for new ones until closed."""

    def __init__(
        self,
        read_all: ReadAll,
        from_position: int,
        appended: threading.Condition,
        poll_interval: float,
    ) -> None:
        self._read_all = read_all
        self._next_position = max(from_position, 1)
        self._appended = appended
        self._poll_interval = poll_interval
        self._buffer: collections.deque[Recorded] = collections.deque()
        self._closed = threading.Event()

    @property
    def next_position(self) -> int:
        """The position the next record returned will have (or later, if there are gaps)."""
        return self._next_position

    def get(self, timeout: float | None = None) -> Recorded | None:
        """The next record; blocks up to `timeout` seconds (None: until one or close)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed.is_set():
            if not self._buffer:
                self._fill()
            if self._buffer:
                recorded = self._buffer.popleft()
                self._next_position = recorded.position + 1
                return recorded
            remaining = self._poll_interval
            if deadline is not None:
                remaining = min(remaining, deadline - time.monotonic())
                if remaining <= 0:
                    return None
            with self._appended:
                self._appended.wait(remaining)
        return None

    def _fill(self) -> None:
        for recorded in self._read_all(self._next_position):
            self._buffer.append(recorded)
            if len(self._buffer) >= 4096:
                break

    def close(self) -> None:
        """Stop: a blocked `get` or iteration returns within one poll interval."""
        self._closed.set()
        with self._appended:
            self._appended.notify_all()

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Recorded:
        recorded = self.get()
        if recorded is None:
            raise StopIteration
        return recorded

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
