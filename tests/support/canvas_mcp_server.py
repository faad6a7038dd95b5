"""A tiny stdio MCP server for end-to-end tests: one canvas tool whose result carries a
`modification` object.

Run it as `python canvas_mcp_server.py`; it speaks JSON-RPC 2.0, one message per line on
stdin/stdout (MCP's stdio transport), and handles `initialize`, `notifications/initialized`,
`ping`, `tools/list` and `tools/call`. Its one tool, `apply_canvas_change`, answers
`{"applied": true, "modification": <its input's modification>}` as a text block, so
chatledger finds the modification in the tool result. It uses only the standard library and
no network. Environment: CANVAS_MCP_LOG (a file: each tools/call is appended as a JSON line),
CANVAS_MCP_START_DELAY (seconds to wait before answering anything: a slow server). It exits
when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

SERVER_NAME = "canvas-test-server"
TOOL_NAME = "apply_canvas_change"
DEFAULT_PROTOCOL_VERSION = "2025-06-18"

TOOLS = [
    {
        "name": TOOL_NAME,
        "description": "Apply a change to the user's canvas and report what was applied.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "modification": {
                    "type": "object",
                    "description": "The change, e.g. {\"action\": \"add_node\", ...}",
                },
            },
            "required": ["modification"],
        },
    }
]


def _reply(message_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": message_id, "result": result}


def _error(message_id: Any, code: int, text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": message_id, "error": {"code": code, "message": text}}


def _log_call(arguments: Any) -> None:
    path = os.environ.get("CANVAS_MCP_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"tool": TOOL_NAME, "arguments": arguments}) + "\n")


def handle(message: dict[str, Any]) -> dict[str, Any] | None:
    """The response to one JSON-RPC message (None for notifications)."""
    method = message.get("method")
    message_id = message.get("id")
    if message_id is None:
        return None  # a notification (initialized, cancelled, ...)
    if method == "initialize":
        params = message.get("params") or {}
        return _reply(message_id, {
            "protocolVersion": params.get("protocolVersion", DEFAULT_PROTOCOL_VERSION),
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": SERVER_NAME, "version": "1.0.0"},
        })
    if method == "ping":
        return _reply(message_id, {})
    if method == "tools/list":
        return _reply(message_id, {"tools": TOOLS})
    if method == "tools/call":
        params = message.get("params") or {}
        if params.get("name") != TOOL_NAME:
            return _error(message_id, -32602, f"unknown tool {params.get('name')!r}")
        arguments = params.get("arguments") or {}
        _log_call(arguments)
        modification = arguments.get("modification")
        if not isinstance(modification, dict):
            return _reply(message_id, {
                "content": [{"type": "text", "text": "modification must be an object"}],
                "isError": True,
            })
        payload = {"applied": True, "modification": modification}
        return _reply(message_id, {
            "content": [{"type": "text", "text": json.dumps(payload, ensure_ascii=False)}],
            "isError": False,
        })
    return _error(message_id, -32601, f"method not found: {method}")


def main() -> int:
    """Serve stdin/stdout until stdin closes."""
    delay = float(os.environ.get("CANVAS_MCP_START_DELAY") or 0)
    if delay > 0:
        time.sleep(delay)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            response: dict[str, Any] | None = _error(None, -32700, "parse error")
        else:
            response = handle(message) if isinstance(message, dict) else _error(
                None, -32600, "invalid request")
        if response is not None:
            sys.stdout.write(json.dumps(response, ensure_ascii=False) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
