"""The stand-in's live mode: stream-json input, many turns per process, the control protocol
(initialize, interrupt, can_use_tool) and a cumulative cost, checked on a real process."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

LIVE_ARGV = [sys.executable, "-m", "chatledger.testing.standin", "--print", "--input-format",
             "stream-json", "--output-format", "stream-json", "--verbose",
             "--include-partial-messages"]


class LiveProcess:
    """A live stand-in with a thread reading its stdout lines into a queue."""

    def __init__(self, *extra: str) -> None:
        self.process = subprocess.Popen([*LIVE_ARGV, *extra], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(json.loads(raw))
        self.lines.put(None)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def user(self, text: str) -> None:
        self.send({"type": "user", "message": {"role": "user", "content": text},
                   "parent_tool_use_id": None, "session_id": "", "uuid": "u"})

    def next_line(self, timeout: float = 10.0) -> dict[str, Any]:
        line = self.lines.get(timeout=timeout)
        assert line is not None, "the stand-in's stdout ended"
        return line

    def until(self, kind: str, timeout: float = 10.0) -> Iterator[dict[str, Any]]:
        """Every line up to and including the first of this type."""
        while True:
            line = self.next_line(timeout)
            yield line
            if line["type"] == kind:
                return

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            return self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def live() -> Iterator[LiveProcess]:
    process = LiveProcess()
    yield process
    process.close()


def test_initialize_is_answered_and_turns_share_one_session(live: LiveProcess) -> None:
    live.send({"type": "control_request", "request_id": "req_1",
               "request": {"subtype": "initialize", "hooks": None}})
    answer = live.next_line()
    assert answer["type"] == "control_response"
    assert answer["response"]["request_id"] == "req_1"
    assert answer["response"]["subtype"] == "success"
    live.user("one")
    first = list(live.until("result"))
    live.user("two")
    second = list(live.until("result"))
    assert first[0]["subtype"] == "init" and second[0]["subtype"] == "init"
    assert first[-1]["result"] == "echo: one" and second[-1]["result"] == "echo: two"
    assert first[-1]["session_id"] == second[-1]["session_id"]


def test_total_cost_is_cumulative_over_the_process(live: LiveProcess) -> None:
    costs = []
    for text in ("one", "two", "three"):
        live.user(text)
        costs.append(list(live.until("result"))[-1]["total_cost_usd"])
    assert costs[0] > 0 and costs[0] < costs[1] < costs[2]


def test_interrupt_ends_the_running_turn_and_the_process_lives_on(live: LiveProcess) -> None:
    live.user("a long answer [[slow 30]]")
    streamed = [live.next_line() for _ in range(3)]  # init, message_start, block_start
    assert streamed[0]["subtype"] == "init"
    live.send({"type": "control_request", "request_id": "req_int",
               "request": {"subtype": "interrupt"}})
    lines = list(live.until("result", timeout=5.0))
    answers = [line for line in lines if line["type"] == "control_response"]
    assert answers and answers[0]["response"]["request_id"] == "req_int"
    assert lines[-1]["is_error"] is True
    assert lines[-1]["subtype"] == "error_during_execution"
    live.user("after")
    assert list(live.until("result"))[-1]["result"] == "echo: after"
    assert live.close() == 0


def test_stdin_eof_ends_the_process_with_status_zero() -> None:
    process = LiveProcess()
    process.user("only")
    assert list(process.until("result"))[-1]["result"] == "echo: only"
    assert process.close() == 0


@pytest.mark.parametrize("behavior", ["allow", "deny"])
def test_a_tool_outside_the_allow_list_is_put_to_the_caller(behavior: str) -> None:
    process = LiveProcess("--permission-prompt-tool", "stdio")
    try:
        process.user("note [[write out.txt]]")
        lines = list(process.until("control_request"))
        request = lines[-1]
        assert request["request"]["subtype"] == "can_use_tool"
        assert request["request"]["tool_name"] == "Write"
        assert request["request"]["tool_use_id"].startswith("toolu_")
        decision: dict[str, Any] = {"behavior": behavior}
        if behavior == "deny":
            decision["message"] = "not today"
        else:
            decision["updatedInput"] = request["request"]["input"]
        process.send({"type": "control_response", "response": {
            "subtype": "success", "request_id": request["request_id"], "response": decision}})
        result = list(process.until("result"))[-1]
        if behavior == "allow":
            assert result["result"].startswith("I wrote")
            assert result["permission_denials"] == []
        else:
            assert result["result"].startswith("I could not write")
            assert [d["tool_name"] for d in result["permission_denials"]] == ["Write"]
    finally:
        process.close()


def test_without_the_prompt_tool_a_tool_outside_the_allow_list_is_denied(
    live: LiveProcess,
) -> None:
    live.user("note [[write out.txt]]")
    lines = list(live.until("result"))
    assert not [line for line in lines if line["type"] == "control_request"]
    assert [d["tool_name"] for d in lines[-1]["permission_denials"]] == ["Write"]
