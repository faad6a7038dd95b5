"""Connections to the PostgreSQL ledger: the first connection (with clear errors for a server
that is down, wrong credentials, a missing database), the pool with a bounded wait, and the
mapping of driver errors to LedgerError.

This module knows nothing of events or the schema; it must not hold a connection across a
caller's code.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool

from ...errors import LedgerError

APPLICATION_NAME = "chatledger"


class PoolExhaustedError(LedgerError):
    """Every connection of the pool stayed busy for the whole bounded wait; nothing was done."""


class ConnectionLostError(LedgerError):
    """The server went away during an operation and did not come back in time."""


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def describe(error: BaseException) -> str:
    """The first line of a driver error, without libpq's noise."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def session_settings(idle_in_transaction_timeout: float) -> str:
    """The SET statements every chatledger connection starts with."""
    milliseconds = max(int(idle_in_transaction_timeout * 1000), 0)
    return (
        "SET TimeZone = 'UTC'; "
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


class Pool:
    """A bounded psycopg pool: `connection()` waits at most `timeout` seconds for a free one."""

    def __init__(self, url: str, *, size: int, timeout: float, connect_timeout: float,
                 idle_in_transaction_timeout: float) -> None:
        self.url = url
        self.size = size
        self.timeout = timeout
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
            reconnect_timeout=max(connect_timeout * 4, 10.0), name="chatledger",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg_pool.PoolTimeout:
            self._pool.close(timeout=1)
            raise LedgerError(
                f"cannot open a connection pool to {redact(url)} within {connect_timeout:g} s"
            ) from None

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one short piece of work (committed or rolled back after)."""
        try:
            context = self._pool.connection(timeout=self.timeout)
            connection = context.__enter__()
        except psycopg_pool.PoolTimeout:
            raise PoolExhaustedError(
                f"all {self.size} PostgreSQL connections stayed busy for {self.timeout:g} s: "
                "raise pool_size, or lower the number of concurrent callers"
            ) from None
        except psycopg.OperationalError as error:
            raise ConnectionLostError(
                f"cannot reach the PostgreSQL ledger at {redact(self.url)}: {describe(error)}"
            ) from None
        try:
            yield connection
        except BaseException as error:
            context.__exit__(type(error), error, error.__traceback__)
            raise
        else:
            context.__exit__(None, None, None)

    def close(self) -> None:
        """Close every connection of the pool."""
        self._pool.close(timeout=5)
