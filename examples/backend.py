"""A small Starlette backend that streams chatledger turns to a browser over a websocket.

Run it with `CHATLEDGER_PATH=/tmp/ledger uvicorn examples.backend:app` (from the repository's
parent, or with chatledger installed: `uvicorn backend:app --app-dir examples`).

- `POST /sessions` (JSON `{"mode": "user", "study_id": null, "resume_session_id": null}`)
  creates or resumes a session and returns its info;
- `GET /sessions/{id}` returns `get_session_info`;
- `WS /sessions/{id}/chat`: send `{"message": ..., "canvas_state": ...}`; receive the turn's
  updates as JSON (`canvas_modification`, `text_delta`, `text`, `error`, `done`). Closing the
  socket mid-turn cancels the agent run, and the ledger records it.
- `GET /metrics`: chatledger's OpenTelemetry metrics in Prometheus' text format, when the
  `otel` extra and `opentelemetry-exporter-prometheus` are installed (404 otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from chatledger import get_session_manager


def _prometheus_metrics() -> bool:
    """Send OpenTelemetry metrics to Prometheus' registry, if the exporter is installed.
    The application, not the library, chooses where telemetry goes: this is that choice."""
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
    except ImportError:
        return False
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    return True


PROMETHEUS = _prometheus_metrics()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Start the process-wide manager with the app and stop it (runs recorded) at shutdown."""
    manager = get_session_manager()
    await manager.start()
    yield
    await manager.stop()


async def create_session(request: Request) -> JSONResponse:
    """Create (or resume) a session."""
    body = await request.json() if await request.body() else {}
    manager = get_session_manager()
    try:
        session = await manager.create_session(
            mode=body.get("mode", "user"),
            study_id=body.get("study_id"),
            resume_session_id=body.get("resume_session_id"),
        )
    except ValueError as error:
        return JSONResponse({"error": str(error)}, status_code=400)
    return JSONResponse(get_session_manager().get_session_info(session.session_id))


async def session_info(request: Request) -> JSONResponse:
    """A session's info, or 404."""
    info = get_session_manager().get_session_info(request.path_params["session_id"])
    if info is None:
        return JSONResponse({"error": "Session not found"}, status_code=404)
    return JSONResponse(info)


async def prometheus(request: Request) -> Response:
    """The metrics in Prometheus' text exposition format (404 without the exporter)."""
    if not PROMETHEUS:
        return JSONResponse({"error": "install chatledger[otel] and "
                                      "opentelemetry-exporter-prometheus"}, status_code=404)
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def chat(websocket: WebSocket) -> None:
    """Stream each turn's updates back over the socket, one JSON object per update."""
    await websocket.accept()
    session_id = websocket.path_params["session_id"]
    manager = get_session_manager()
    try:
        while True:
            request = await websocket.receive_json()
            turn = manager.send_message(
                session_id,
                request.get("message", ""),
                request.get("canvas_state"),
                stream_deltas=bool(request.get("stream_deltas", True)),
            )
            try:
                async for update in turn:
                    await websocket.send_json(update)
            finally:
                await turn.aclose()  # cancels the run if the socket went away mid-turn
    except WebSocketDisconnect:
        return


app = Starlette(
    routes=[
        Route("/sessions", create_session, methods=["POST"]),
        Route("/sessions/{session_id}", session_info),
        Route("/metrics", prometheus),
        WebSocketRoute("/sessions/{session_id}/chat", chat),
    ],
    lifespan=lifespan,
)
