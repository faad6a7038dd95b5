"""Watching chatledger run: library logging with the session and turn on each record, and
OpenTelemetry spans and metrics when the optional `otel` extra is installed.

Nothing here prints or configures handlers: the package logger has a NullHandler, and spans
and metrics go to whatever providers the host application set (none: they cost next to
nothing). Without `opentelemetry-api` every hook is a no-op.
"""

from .logs import SessionLogAdapter, session_logger
from .otel import (
    NO_TRACE,
    TrackedQueue,
    TurnTrace,
    instrument_store,
    record_group_commit,
    record_refusal,
    start_turn_trace,
    watch_runtime,
)

__all__ = [
    "NO_TRACE",
    "SessionLogAdapter",
    "TrackedQueue",
    "TurnTrace",
    "instrument_store",
    "record_group_commit",
    "record_refusal",
    "session_logger",
    "start_turn_trace",
    "watch_runtime",
]
