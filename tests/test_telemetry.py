"""Telemetry: the package logger's NullHandler, the session and turn on each record, and the
OpenTelemetry span per turn and metrics (appends per group commit among them), read back with
the SDK's in-memory exporters."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit import open_ledger

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import metrics, trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

import chatledger  # noqa: E402
from chatledger.actors import session_turns  # noqa: E402
from chatledger.events import SessionResumed  # noqa: E402
from chatledger.storage import open_store  # noqa: E402

_SPANS = InMemorySpanExporter()
_METRICS = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def providers() -> Iterator[None]:
    """The SDK's providers with in-memory exporters (set once: the API allows one per process)."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_SPANS))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_METRICS]))
    yield


def _metric_points() -> dict[str, list[Any]]:
    data = _METRICS.get_metrics_data()
    points: dict[str, list[Any]] = {}
    if data is None:
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def test_the_package_logger_has_a_null_handler_and_never_prints() -> None:
    handlers = logging.getLogger(chatledger.__name__).handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


def test_a_record_from_a_session_carries_its_session_and_turn(
    store_location: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(**_: Any) -> Any:
        raise RuntimeError("recording broke")

    monkeypatch.setattr(session_turns, "finish_run", broken)
    with open_ledger(store_location) as ledger, caplog.at_level(logging.ERROR, "chatledger"):
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "hello")
    assert outcome.reason == "ledger_error"
    records = [r for r in caplog.records if "could not record the outcome" in r.getMessage()]
    assert records, caplog.text
    assert (records[0].session_id, records[0].turn) == (session_id, 1)  # type: ignore[attr-defined]


def test_a_turn_is_one_span_with_its_stages_and_metrics_are_reported(store_location: str) -> None:
    _SPANS.clear()
    with open_ledger(store_location) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "hello there", stream_deltas=True).ok
        assert not ledger.send(session_id, "now fail [[fail]]").ok
        ledger.set_budget(session_id, usd=0)
        assert ledger.send(session_id, "refused").reason == "budget_exceeded"
        points = _metric_points()  # collected while the runtime is open
    spans = [span for span in _SPANS.get_finished_spans() if span.name == "chatledger.turn"
             and span.attributes["chatledger.session_id"] == session_id]
    assert len(spans) == 2  # a refused turn never starts
    ok, failed = sorted(spans, key=lambda span: span.attributes["chatledger.turn"])
    names = [event.name for event in ok.events]
    assert names == ["queue_wait", "agent_start", "first_token", "result", "append"]
    assert ok.attributes["chatledger.ok"] is True
    assert failed.attributes["chatledger.reason"] == "exit_status"
    assert failed.status.status_code == trace.StatusCode.ERROR

    def total(name: str, **attributes: Any) -> float:
        return sum(point.value if hasattr(point, "value") else point.count
                   for point in points.get(name, [])
                   if all(point.attributes.get(k) == v for k, v in attributes.items()))

    assert total("chatledger.turns", outcome="ok") >= 1
    assert total("chatledger.turns", outcome="refused") >= 1
    assert total("chatledger.turn.failures", reason="exit_status") >= 1
    assert total("chatledger.turn.failures", reason="budget_exceeded") >= 1
    for histogram in ("chatledger.run.duration", "chatledger.turn.time_to_first_token",
                      "chatledger.append.duration", "chatledger.append.batch_size",
                      "chatledger.turn.queue_wait"):
        assert total(histogram) >= 1, histogram
    assert "chatledger.turn.queue_depth" in points
    assert any(point.value >= 1 for point in points["chatledger.actors.live"])
    assert any(point.value > 0 for point in points["chatledger.ledger.size"])


def _histogram(name: str) -> tuple[int, float, float]:
    """(count, sum, max) of a histogram over its points so far (0s before its first)."""
    points = _metric_points().get(name, [])
    return (sum(point.count for point in points), sum(point.sum for point in points),
            max((point.max for point in points), default=0.0))


def test_each_group_commit_reports_how_many_appends_it_committed(tmp_path: Path) -> None:
    before_count, before_sum, _ = _histogram("chatledger.append.group_commit_size")
    threads_count, per_thread = 8, 25
    with open_store(str(tmp_path / "ledger")) as store:
        ready = threading.Barrier(threads_count)

        def writer(number: int) -> None:
            ready.wait(30)
            for version in range(per_thread):
                store.append(f"s-{number}", [SessionResumed()], version)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        commits = store.store.writer.batches_committed  # type: ignore[attr-defined]
    count, total, largest = _histogram("chatledger.append.group_commit_size")
    appends = threads_count * per_thread
    assert total - before_sum == appends  # every append counted once, in its commit
    assert count - before_count == commits  # one point per group commit
    assert 1 <= largest <= threads_count
