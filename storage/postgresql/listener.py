"""The wake-up for subscriptions: one LISTEN connection per store, reconnected when dropped.

A notification only says "the sealed head moved"; subscribers then read the log themselves,
so a notification lost while the connection was down costs nothing: after reconnecting the
listener wakes every subscriber once, and they catch up. It reconnects every half second at
most while the server is away: with a multi-host URL (`target_session_attrs=read-write`)
that finds a promoted standby. It never reads events.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from ...errors import LedgerError
from .connection import RETRY_FIRST_PAUSE, RETRY_LONGEST_PAUSE, connect, describe
from .schema import SEAL_CHANNEL

logger = logging.getLogger(__name__)


class SealListener:
    """LISTENs for seals in a background thread and notifies `condition` on each."""

    def __init__(self, url: str, condition: threading.Condition, *, connect_timeout: float
                 ) -> None:
        self._url = url
        self._condition = condition
        self._connect_timeout = connect_timeout
        self._stop = threading.Event()
        self.connected = threading.Event()
        """Set while the LISTEN connection is up (tests wait on it)."""
        self.backend_pid: int | None = None
        self.connections = 0
        self._thread = threading.Thread(target=self._run, name="chatledger-pg-listener",
                                        daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        with self._condition:
            self._condition.notify_all()

    def _run(self) -> None:
        """Listen, and reconnect with a bounded back-off. Runs on the listener thread."""
        pause = RETRY_FIRST_PAUSE
        failing = False
        while not self._stop.is_set():
            connection: psycopg.Connection[Any] | None = None
            try:
                connection = connect(self._url, connect_timeout=self._connect_timeout,
                                     autocommit=True)
                connection.execute(f"LISTEN {SEAL_CHANNEL}")
                self.backend_pid = connection.info.backend_pid
                self.connections += 1
                self.connected.set()
                pause = RETRY_FIRST_PAUSE
                if failing:
                    logger.info("chatledger listener: listening again")
                    failing = False
                self._wake()  # anything sealed while we were away
                while not self._stop.is_set():
                    for _ in connection.notifies(timeout=0.5):
                        self._wake()
            except (psycopg.Error, LedgerError) as error:
                if not self._stop.is_set():
                    # One line per outage; subscribers keep polling meanwhile.
                    log = logger.debug if failing else logger.info
                    log("chatledger listener: %s (reconnecting)", describe(error))
                    failing = True
            finally:
                self.connected.clear()
                if connection is not None:
                    connection.close()
            self._stop.wait(pause)
            pause = min(pause * 2, RETRY_LONGEST_PAUSE)

    def close(self) -> None:
        """Stop listening (within half a second)."""
        self._stop.set()
        self._thread.join(timeout=5)
