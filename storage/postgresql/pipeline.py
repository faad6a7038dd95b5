"""Calls of one prepared statement on one connection in libpq's pipeline mode: a call is sent
without waiting for the answers of the calls before it, each call is its own implicit
transaction (a Sync follows it), and the answers come back in the order the calls were sent.

Why: the server runs a connection's calls one after another, so a call sent while the one
before it is still running starts the moment that one commits, and the client prepares the
next call meanwhile instead of waiting a round trip for each. psycopg's own pipeline waits
for every answer at each Sync, so this drives libpq's pipeline directly (`psycopg.pq`).

Threads: any thread may send; the thread waiting for the oldest unanswered call reads the
connection for it (the others sleep until theirs is the oldest), so no thread of our own is
needed. At most `depth` calls are unanswered at once. A lost connection fails every call
still unanswered with ConnectionLostError (whether each committed is not known: the caller
finds out by reading); the next `send` connects again. This module knows nothing of events.
"""

from __future__ import annotations

import collections
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq

from ...errors import LedgerError
from .connection import ConnectionLostError, describe

T = TypeVar("T")

READ_SLICE = 0.5
"""A reader waits for the socket this long at most before it looks at its deadline again."""


class PipelineCall:
    """One call sent down the pipeline: its first row once answered (as text values), or the
    error it met."""

    __slots__ = ("row", "error", "done", "_stage")

    def __init__(self) -> None:
        self.row: tuple[bytes | None, ...] | None = None
        self.error: BaseException | None = None
        self.done = False
        self._stage = 0
        """0: waiting for the result, 1: for the end of the results, 2: for the Sync."""

    def take(self, result: pq.abc.PGresult | None, encoding: str) -> bool:
        """Take in the next result the connection gave for this call; whether the call is
        now complete (its Sync came back)."""
        if result is None:
            if self._stage == 1:
                self._stage = 2
            return False
        status = result.status
        if status == pq.ExecStatus.PIPELINE_SYNC:
            self.done = True
            return True
        if self._stage == 0:
            self._stage = 1
            if status == pq.ExecStatus.TUPLES_OK:
                self.row = tuple(result.get_value(0, column) for column in
                                 range(result.nfields)) if result.ntuples else ()
            else:
                self.error = pg_errors.error_from_result(result, encoding=encoding)
        return False


class StatementPipeline:
    """Calls of the prepared statement `statement` (named `name`) on one connection of its
    own, made by `connect`, up to `depth` unanswered at once."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], name: str,
                 statement: str, depth: int) -> None:
        self._connect = connect
        self._name = name.encode()
        self._statement = statement
        self._depth = max(depth, 1)
        self._state = threading.Condition()
        """Guards `_calls` and `_connection`; notified when a call completes."""
        self._io = threading.Lock()
        """Held for every libpq call on the connection (never while waiting for the socket)."""
        self._calls: collections.deque[PipelineCall] = collections.deque()
        self._connection: psycopg.Connection[Any] | None = None
        self._encoding = "utf-8"

    @property
    def unanswered(self) -> int:
        """How many calls were sent and are not answered yet."""
        with self._state:
            return len(self._calls)

    def connection(self) -> psycopg.Connection[Any]:
        """The pipeline's connection, connecting if there is none (tests' fault hooks)."""
        with self._state:
            return self._connected()

    def wait_for_room(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until fewer than `depth` calls are unanswered;
        whether there is room now."""
        with self._state:
            return self._room(time.monotonic() + timeout)

    def _room(self, deadline: float) -> bool:
        """Wait (under `_state`) until fewer than `depth` calls are unanswered or the
        deadline passes; whether there is room."""
        while len(self._calls) >= self._depth:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._state.wait(remaining)
        return True

    def send(self, params: Sequence[bytes | None], timeout: float) -> PipelineCall:
        """Send one call with these binary parameters, first waiting (up to `timeout`
        seconds) while `depth` calls are unanswered. ConnectionLostError if the connection
        cannot be made, or breaks while sending (then whether the server got the call is not
        known: the caller finds out by reading, as for a lost answer)."""
        deadline = time.monotonic() + timeout
        with self._state:
            if not self._room(deadline):
                raise ConnectionLostError("the PostgreSQL pipeline stayed full: no answer "
                                          f"came back in {timeout:g} s")
            connection = self._connected()
            call = PipelineCall()

            def send_call(pgconn: pq.abc.PGconn) -> None:
                pgconn.send_query_prepared(self._name, params, param_formats=[1] * len(params))
                pgconn.pipeline_sync()
                _flush(pgconn, deadline)

            self._on_connection(connection, send_call, "while sending")
            self._calls.append(call)
        return call

    def wait(self, call: PipelineCall, timeout: float) -> tuple[bytes | None, ...]:
        """The call's first row, waiting up to `timeout` seconds; the server's error for it
        as psycopg raises it, or ConnectionLostError (committed or not, unknown)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._state:
                while not call.done and self._calls and self._calls[0] is not call:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._state.wait(remaining)
                connection = self._connection
            if call.done:
                break
            if time.monotonic() >= deadline:
                self._give_up(connection, timeout)
                continue
            assert connection is not None
            self._read(connection, call, deadline)
        if call.error is not None:
            raise call.error
        assert call.row is not None
        return call.row

    def _read(self, connection: psycopg.Connection[Any], call: PipelineCall,
              deadline: float) -> None:
        """Read the connection until `call` (the oldest unanswered) completes, the connection
        breaks or the deadline passes."""
        def take_results(pgconn: pq.abc.PGconn) -> tuple[bool, int]:
            pgconn.consume_input()
            complete, nothing = False, 0
            while not complete and nothing < 2 and not pgconn.is_busy():
                result = pgconn.get_result()
                nothing = nothing + 1 if result is None else 0
                complete = call.take(result, self._encoding)
            return complete, pgconn.socket

        while True:
            try:
                complete, socket = self._on_connection(connection, take_results, "")
            except ConnectionLostError:
                return  # the call failed with the others
            if complete:
                with self._state:
                    if self._calls and self._calls[0] is call:
                        self._calls.popleft()
                    self._state.notify_all()
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                select.select([socket], [], [], min(remaining, READ_SLICE))
            except (OSError, ValueError) as error:  # the connection was closed meanwhile
                self._break(connection, error)
                return

    def _on_connection(self, connection: psycopg.Connection[Any],
                       work: Callable[[pq.abc.PGconn], T], doing: str) -> T:
        """`work` on the connection's libpq handle, under `_io`. If the connection breaks:
        it is closed, its unanswered calls fail, and ConnectionLostError is raised."""
        with self._io:
            try:
                return work(connection.pgconn)
            except (psycopg.Error, OSError) as error:
                failure = error
        self._break(connection, failure)
        raise ConnectionLostError(f"lost the connection to PostgreSQL {doing}".rstrip() +
                                  f": {describe(failure)}", describe(failure))

    def _connected(self) -> psycopg.Connection[Any]:
        """The live connection (under `_state`), made and set up if there is none."""
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        if connection is not None:
            self._fail_all(ConnectionLostError("the PostgreSQL connection was closed"))
        connection = None
        try:
            connection = self._connect()
            connection.autocommit = True
            connection.execute(f"PREPARE {self._name.decode()} AS {self._statement}")
            self._encoding = connection.info.encoding
            connection.pgconn.enter_pipeline_mode()
        except (psycopg.OperationalError, LedgerError) as error:  # away, or not writable yet
            if connection is not None:
                connection.close()
            raise ConnectionLostError(f"cannot reach PostgreSQL: {describe(error)}",
                                      describe(error)) from None
        except psycopg.Error as error:
            if connection is not None:
                connection.close()
            raise LedgerError(f"cannot prepare {self._name.decode()} on PostgreSQL: "
                              f"{describe(error)}") from None
        self._connection = connection
        return connection

    def _break(self, connection: psycopg.Connection[Any], error: BaseException) -> None:
        """The connection broke: close it and fail every call it still owed."""
        with self._state:
            if self._connection is connection:
                self._connection = None
                self._fail_all(ConnectionLostError(
                    f"lost the connection to PostgreSQL: {describe(error)}", describe(error)))
        connection.close()

    def _give_up(self, connection: psycopg.Connection[Any] | None, timeout: float) -> None:
        """No answer within a caller's timeout: the connection is dropped like a lost one."""
        if connection is None:
            return
        self._break(connection, TimeoutError(f"no answer from PostgreSQL in {timeout:g} s"))

    def _fail_all(self, error: ConnectionLostError) -> None:
        """Fail every unanswered call (under `_state`)."""
        for call in self._calls:
            if not call.done:
                call.error, call.done = error, True
        self._calls.clear()
        self._state.notify_all()

    def close(self) -> None:
        """Close the connection; calls still unanswered fail with ConnectionLostError."""
        with self._state:
            connection, self._connection = self._connection, None
            self._fail_all(ConnectionLostError("the PostgreSQL pipeline was closed"))
        if connection is not None:
            connection.close()


def _flush(pgconn: pq.abc.PGconn, deadline: float) -> None:
    """Push everything libpq buffered to the server (a non-blocking connection may keep part
    of it), waiting for the socket to take it until `deadline`."""
    while pgconn.flush():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("PostgreSQL did not take the call in time")
        select.select([], [pgconn.socket], [], min(remaining, READ_SLICE))
