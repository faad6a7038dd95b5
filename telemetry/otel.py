"""OpenTelemetry spans and metrics for turns, queues, actors and appends (the `otel` extra).

One span per turn (`chatledger.turn`), started when its message was queued, with events
`queue_wait`, `agent_start`, `first_token`, `result` and `append`; metrics: turns by outcome,
failures by reason, run duration, time to first token, queue depth, live actors, append
latency and events per append, write requests per group commit, ledger size. Everything goes through the global providers of
`opentelemetry-api`, which the host application configures (without an SDK they are no-ops);
without the package installed every hook here does nothing. Hooks are called from actor and
pool threads and never block.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..actors.updates import AnyTurnUpdate
    from ..agent import AgentUpdate, RunOutcome

try:  # the optional extra
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    _metrics = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]

INSTRUMENTATION_NAME = "chatledger"
ENABLED = _trace is not None


class _Instruments:
    """The meter's instruments, created once (the API's proxies follow a provider set later)."""

    def __init__(self) -> None:
        assert _metrics is not None
        meter = _metrics.get_meter(INSTRUMENTATION_NAME)
        self.turns = meter.create_counter(
            "chatledger.turns", unit="{turn}", description="Turns that ended, by outcome")
        self.failures = meter.create_counter(
            "chatledger.turn.failures", unit="{turn}", description="Failed turns, by reason")
        self.run_duration = meter.create_histogram(
            "chatledger.run.duration", unit="s", description="Agent run duration")
        self.first_token = meter.create_histogram(
            "chatledger.turn.time_to_first_token", unit="s",
            description="From the turn's start to the agent's first text")
        self.queue_wait = meter.create_histogram(
            "chatledger.turn.queue_wait", unit="s", description="Time a message waited to start")
        self.queue_depth = meter.create_up_down_counter(
            "chatledger.turn.queue_depth", unit="{turn}", description="Turns waiting to start")
        self.append_duration = meter.create_histogram(
            "chatledger.append.duration", unit="s", description="Append latency (durable)")
        self.append_batch = meter.create_histogram(
            "chatledger.append.batch_size", unit="{event}", description="Events per append")
        self.group_commit = meter.create_histogram(
            "chatledger.append.group_commit_size", unit="{request}",
            description="Write requests (appends, lease changes) committed together in one "
                        "LMDB write transaction (group commit)")
        meter.create_observable_gauge(
            "chatledger.actors.live", callbacks=[_observe_live_actors], unit="{actor}",
            description="Session actors alive")
        meter.create_observable_gauge(
            "chatledger.ledger.size", callbacks=[_observe_ledger_size], unit="By",
            description="Bytes the ledger's data takes")


_instruments: _Instruments | None = None
_instruments_lock = threading.Lock()


def _meter() -> _Instruments | None:
    global _instruments
    if not ENABLED:
        return None
    if _instruments is None:
        with _instruments_lock:
            if _instruments is None:
                _instruments = _Instruments()
    return _instruments


# -- a turn's span --------------------------------------------------------------------------


class TurnTrace:
    """What a turn reports as it goes; this base reports nothing (telemetry off)."""

    def agent_started(self) -> None:
        """The agent's run was handed to the pool."""

    def agent_event(self, event: AgentUpdate) -> None:
        """The agent reported something (the first text is the first token). Pool thread."""

    def result(self, outcome: RunOutcome) -> None:
        """The agent's run ended. Pool thread."""

    def finished(self, updates: Sequence[AnyTurnUpdate]) -> None:
        """The turn's outcome was recorded (or not) and told: ends the span."""


NO_TRACE = TurnTrace()


class _SpanTrace(TurnTrace):
    def __init__(self, session_id: str, turn: int, queued_at_ns: int, attempt: int) -> None:
        assert _trace is not None
        instruments = _meter()
        assert instruments is not None
        self._instruments = instruments
        self._started = time.monotonic()
        self._first_token_seen = False
        self._lock = threading.Lock()
        self._span = _trace.get_tracer(INSTRUMENTATION_NAME).start_span(
            "chatledger.turn", start_time=queued_at_ns,
            attributes={"chatledger.session_id": session_id, "chatledger.turn": turn,
                        "chatledger.attempt": attempt})
        wait = max(time.time_ns() - queued_at_ns, 0) / 1e9
        self._span.add_event("queue_wait", {"seconds": wait})
        instruments.queue_wait.record(wait)

    def agent_started(self) -> None:
        self._span.add_event("agent_start")

    def agent_event(self, event: AgentUpdate) -> None:
        from ..agent import TextDelta

        if not isinstance(event, TextDelta):
            return
        with self._lock:
            if self._first_token_seen:
                return
            self._first_token_seen = True
        seconds = time.monotonic() - self._started
        self._span.add_event("first_token", {"seconds": seconds})
        self._instruments.first_token.record(seconds)

    def result(self, outcome: RunOutcome) -> None:
        attributes: dict[str, Any] = {"ok": outcome.ok, "duration": outcome.duration}
        if outcome.cost_usd is not None:
            attributes["cost_usd"] = outcome.cost_usd
        if outcome.failure_reason:
            attributes["reason"] = outcome.failure_reason
        self._span.add_event("result", attributes)
        self._instruments.run_duration.record(outcome.duration)

    def finished(self, updates: Sequence[AnyTurnUpdate]) -> None:
        from ..actors.updates import TurnDone

        done = next((u for u in reversed(updates) if isinstance(u, TurnDone)), None)
        ok = done is not None and done.ok
        reason = None if done is None else done.reason
        self._span.add_event("append", {"ok": ok})
        self._span.set_attribute("chatledger.ok", ok)
        if not ok:
            self._span.set_attribute("chatledger.reason", reason or "unknown")
            self._span.set_status(_trace.Status(_trace.StatusCode.ERROR, reason or ""))
            self._instruments.failures.add(1, {"reason": reason or "unknown"})
        self._instruments.turns.add(1, {"outcome": "ok" if ok else "failed"})
        self._span.end()


def start_turn_trace(session_id: str, turn: int, queued_at_ns: int, attempt: int = 1) -> TurnTrace:
    """The trace of a turn that is starting (its message was queued at `queued_at_ns`)."""
    if not ENABLED:
        return NO_TRACE
    return _SpanTrace(session_id, turn, queued_at_ns, attempt)


def record_refusal(session_id: str, scope: str) -> None:
    """Count a turn a spend cap refused."""
    instruments = _meter()
    if instruments is not None:
        instruments.turns.add(1, {"outcome": "refused"})
        instruments.failures.add(1, {"reason": "budget_exceeded", "scope": scope})


# -- the queue, the appends, the live actors -------------------------------------------------


class TrackedQueue(collections.deque[Any]):
    """A session's FIFO of waiting turns that keeps the queue-depth metric up to date."""

    def append(self, item: Any) -> None:
        """Queue a turn."""
        super().append(item)
        _queue_changed(1)

    def popleft(self) -> Any:
        """Take the next turn."""
        item = super().popleft()
        _queue_changed(-1)
        return item

    def remove(self, item: Any) -> None:
        """Drop a queued turn (cancelled)."""
        super().remove(item)
        _queue_changed(-1)

    def clear(self) -> None:
        """Drop every queued turn."""
        count = len(self)
        super().clear()
        _queue_changed(-count)


def _queue_changed(delta: int) -> None:
    instruments = _meter()
    if instruments is not None and delta:
        instruments.queue_depth.add(delta)


class _InstrumentedStore:
    """A store whose appends are timed and counted; everything else goes straight through."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def append(self, session_id: str, events: Iterable[Any], expected_version: int,
               **fencing: Any) -> Any:
        """Append through the store (its lease options passed on), timed and counted."""
        batch = list(events)
        started = time.perf_counter()
        try:
            return self._store.append(session_id, batch, expected_version, **fencing)
        finally:
            instruments = _meter()
            if instruments is not None:
                instruments.append_duration.record(time.perf_counter() - started)
                instruments.append_batch.record(len(batch))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def record_group_commit(requests: int) -> None:
    """Count one group commit of `requests` write requests (called on the LMDB writer
    thread after it committed; never blocks)."""
    instruments = _meter()
    if instruments is not None:
        instruments.group_commit.record(requests)


def instrument_store(store: Any) -> Any:
    """`store` with its appends measured (itself when telemetry is off)."""
    return _InstrumentedStore(store) if ENABLED else store


_runtimes: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_runtime(runtime: Any) -> None:
    """Report a runtime's live actors and ledger size while it is open."""
    if _meter() is not None:
        _runtimes.add(runtime)


def _observations(measure: Callable[[Any], float]) -> list[Any]:
    assert _metrics is not None
    values = []
    for runtime in list(_runtimes):
        if getattr(runtime, "_closed", False):
            continue
        try:
            values.append(_metrics.Observation(measure(runtime),
                                               {"chatledger.ledger": runtime.log.location}))
        except Exception:  # a ledger closing under us: nothing to report for it
            continue
    return values


def _observe_live_actors(options: Any) -> list[Any]:
    return _observations(lambda runtime: len(runtime.registry))


def _observe_ledger_size(options: Any) -> list[Any]:
    return _observations(lambda runtime: runtime.log.disk_size())
