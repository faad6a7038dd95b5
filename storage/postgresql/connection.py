"""Connections to the PostgreSQL ledger: the first connection (with clear errors for a server
that is down, wrong credentials, a missing database), the pool with a bounded wait, the
mapping of driver errors to LedgerError, and `retrying`, the one bounded back-off that every
part of the store uses while a server is unreachable.

A URL may name several hosts (`postgresql://db1:5432,db2:5432/ledger?target_session_attrs=
read-write`): libpq tries them in turn and keeps the first that accepts writes, so after a
failover new connections find the promoted primary. The pool replaces a connection found
broken, and then checks its idle ones in the background (after a primary died they all
are), so callers do not each meet a dead one. A pool that cannot get a connection because
no server answers says so (ConnectionLostError), not that it is exhausted.

This module knows nothing of events or the schema; it must not hold a connection across a
caller's code.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool

from ...errors import LedgerError

APPLICATION_NAME = "chatledger"
RETRY_FIRST_PAUSE = 0.05
RETRY_LONGEST_PAUSE = 0.5
"""The back-off between tries while the server is away: short, since a failover to a
standby typically takes a second or two, and a try that fails costs little."""

WAIT_SLICE = 0.25
"""A wait for a pooled connection is asked again this often (see `Pool._checkout`)."""

logger = logging.getLogger(__name__)


class PoolExhaustedError(LedgerError):
    """Every connection of the pool stayed busy for the whole bounded wait; nothing was done."""


class ConnectionLostError(LedgerError):
    """The server went away during an operation and did not come back in time."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message
        """The driver's words for it ("connection refused", "session is read-only")."""


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def describe(error: BaseException) -> str:
    """The first line of a driver error, without libpq's noise."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def session_settings(idle_in_transaction_timeout: float) -> str:
    """The SET statements every chatledger connection starts with.

    Bitmap scans are off: every read chatledger makes is a key lookup or a range of a key in
    its order (a session's stream by version, the log by position), which an index scan
    returns in that order. With statistics taken before a session grew (after a bulk load,
    until autovacuum's next ANALYZE) the planner chose a bitmap scan and a sort instead:
    measured, a 1,000-event session's read took 1.36 ms of server time instead of 0.59."""
    milliseconds = max(int(idle_in_transaction_timeout * 1000), 0)
    return (
        "SET TimeZone = 'UTC'; "
        "SET enable_bitmapscan = off; "
        f"SET idle_in_transaction_session_timeout = {milliseconds}; "
        f"SET application_name = '{APPLICATION_NAME}'"
    )


def connect(url: str, *, connect_timeout: float, autocommit: bool = False,
            idle_in_transaction_timeout: float = 30.0) -> psycopg.Connection[Any]:
    """One new connection; LedgerError saying why if the server cannot be reached or refuses."""
    try:
        connection = psycopg.connect(url, connect_timeout=max(int(connect_timeout), 1),
                                     autocommit=True)
    except psycopg.Error as error:
        raise LedgerError(
            f"cannot open the PostgreSQL ledger at {redact(url)}: {describe(error)} "
            "(is the server running and the URL, user and password right?)"
        ) from None
    try:
        connection.execute(session_settings(idle_in_transaction_timeout))
        connection.autocommit = autocommit
    except psycopg.Error as error:
        connection.close()
        raise LedgerError(f"cannot set up a connection to {redact(url)}: {describe(error)}") from None
    return connection


def retrying(deadline: float) -> Iterator[float]:
    """Pauses of a bounded back-off: yields the seconds left before `deadline` (monotonic)
    before each try, sleeping between tries; stops once the deadline has passed (after at
    least one try). Blocks the calling thread."""
    pause = RETRY_FIRST_PAUSE
    while True:
        yield deadline - time.monotonic()
        if time.monotonic() + pause > deadline:
            return
        time.sleep(pause)
        pause = min(pause * 2, RETRY_LONGEST_PAUSE)


class Pool:
    """A bounded psycopg pool: `connection()` waits at most `timeout` seconds for a free one."""

    def __init__(self, url: str, *, size: int, timeout: float, connect_timeout: float,
                 idle_in_transaction_timeout: float) -> None:
        self.url = url
        self.size = size
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._checking = threading.Lock()
        settings = session_settings(idle_in_transaction_timeout)

        def configure(connection: psycopg.Connection[Any]) -> None:
            connection.autocommit = True
            connection.execute(settings)
            connection.autocommit = False

        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=size, timeout=timeout, open=False,
            kwargs={"connect_timeout": max(int(connect_timeout), 1)},
            # No check on every checkout (a round trip each): a connection found broken
            # on use is discarded by the pool, and reads and appends try again once.
            configure=configure,
            # Short: the pool's own back-off doubles from 1 s, so after a long outage it
            # would wait seconds past the server's return; once it gives up, the next
            # request (a waiting caller asks again every WAIT_SLICE) starts a fresh attempt.
            reconnect_timeout=1.0, name="chatledger",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg_pool.PoolTimeout:
            self._pool.close(timeout=1)
            raise LedgerError(
                f"cannot open a connection pool to {redact(url)} within {connect_timeout:g} s"
            ) from None

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one short piece of work (committed or rolled back after),
        waiting at most `timeout` (default: the pool's) for it. PoolExhaustedError if every
        connection stayed busy, ConnectionLostError if no server answers."""
        wait = self.timeout if timeout is None else max(min(timeout, self.timeout), 0.01)
        try:
            context, connection = self._checkout(time.monotonic() + wait)
        except psycopg_pool.PoolTimeout:
            unreachable = self._unreachable()
            if unreachable is not None:
                raise ConnectionLostError(
                    f"cannot reach the PostgreSQL ledger at {redact(self.url)}: {unreachable}",
                    unreachable) from None
            raise PoolExhaustedError(
                f"all {self.size} PostgreSQL connections stayed busy for {wait:g} s: "
                "raise pool_size, or lower the number of concurrent callers"
            ) from None
        except psycopg.OperationalError as error:
            raise ConnectionLostError(
                f"cannot reach the PostgreSQL ledger at {redact(self.url)}: {describe(error)}",
                describe(error)) from None
        try:
            yield connection
        except BaseException as error:
            broken = connection.broken
            context.__exit__(type(error), error, error.__traceback__)
            if broken:
                self._check_idle_connections()
            raise
        else:
            context.__exit__(None, None, None)

    def _checkout(self, deadline: float) -> tuple[Any, psycopg.Connection[Any]]:
        """A connection from the pool, asked for in slices of WAIT_SLICE seconds until
        `deadline`: each new request lets the pool start a new connection attempt (it
        gives up on one after its short reconnect timeout), so a server that comes back is
        found within a slice. PoolTimeout at the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            context = self._pool.connection(timeout=max(min(remaining, WAIT_SLICE), 0.01))
            try:
                return context, context.__enter__()
            except psycopg_pool.PoolTimeout:
                if time.monotonic() >= deadline:
                    raise

    def _unreachable(self) -> str | None:
        """Why a new connection cannot be made now (None: it can, so the pool is simply
        busy). Blocks up to the connect timeout; only asked after a pool timeout."""
        try:
            probe = psycopg.connect(self.url, connect_timeout=max(int(self.connect_timeout), 1),
                                    autocommit=True)
        except psycopg.Error as error:
            return describe(error)
        probe.close()
        return None

    def _check_idle_connections(self) -> None:
        """A connection was found broken: in the background, test the idle ones and replace
        those that are broken too (after a server died, all of them are). One at a time."""
        if not self._checking.acquire(blocking=False):
            return

        def check() -> None:
            try:
                self._pool.check()
            except Exception as error:  # the next use finds out again
                logger.debug("chatledger pool check: %s", describe(error))
            finally:
                self._checking.release()

        threading.Thread(target=check, name="chatledger-pg-pool-check", daemon=True).start()

    def close(self) -> None:
        """Close every connection of the pool."""
        self._pool.close(timeout=5)
