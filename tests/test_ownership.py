"""One turn at a time in every process: real processes share one session through its lease.

Each test starts real `turn_sender.py` processes on one LMDB ledger (bounded by timeouts) and
judges by the recorded events: turns never overlap (no RunStarted while another run is
open), every turn is closed, each prompt holds every earlier answer (the prompt recorder
agent keeps each prompt), a killed owner's turn is closed as interrupted by the process that
takes over within the bound, and a stopped owner cannot append once it was taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from testkit import wait_until

from chatledger.events import (
    MessageSent,
    Recorded,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionCreated,
)
from chatledger.storage import open_store

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc for process ids")

SUPPORT = Path(__file__).parent / "support"
PROCESS_BOUND = 90.0
HANDOVER_BOUND = 5.0


def sender_environment(prompts: Path, **settings: str) -> dict[str, str]:
    """The environment of a turn sender: the prompt recorder as agent, a long window."""
    environment = dict(os.environ)
    environment.update({
        "CHATLEDGER_AGENT_COMMAND": f"{sys.executable} {SUPPORT / 'prompt_recorder.py'}",
        "CHATLEDGER_TEST_PROMPTS": str(prompts),
        "CHATLEDGER_HISTORY_WINDOW": "100",
        "CHATLEDGER_TIMEOUT": "60",
        "CHATLEDGER_KILL_GRACE": "0.5",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), environment.get("PYTHONPATH", "")]),
    })
    environment.update(settings)
    return environment


def start_sender(path: Path, session_id: str, messages: list[str],
                 environment: dict[str, str]) -> subprocess.Popen[str]:
    """A turn sender process sending `messages` to the session, in order."""
    return subprocess.Popen(
        [sys.executable, str(SUPPORT / "turn_sender.py"), str(path), session_id, *messages],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )


def finish(process: subprocess.Popen[str]) -> tuple[list[dict[str, Any]], str]:
    """Wait for a sender (bounded); its turn reports and its stderr."""
    try:
        out, err = process.communicate(timeout=PROCESS_BOUND)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"a sender did not finish within {PROCESS_BOUND} s: {err[-2000:]}")
    reports = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return reports, err


def create_session(path: Path, session_id: str) -> None:
    """Create the session with a plain append (no runtime in the test process)."""
    with open_store(path) as store:
        store.append(session_id, [SessionCreated(mode="user")], 0)


def session_events(path: Path, session_id: str) -> list[Recorded]:
    """The session's records as stored now."""
    with open_store(path) as store:
        return store.read_session(session_id)


def assert_turns_never_overlap(records: list[Recorded]) -> None:
    """No run starts while another is open, and every run is closed."""
    open_turn: int | None = None
    for recorded in records:
        event = recorded.event
        if isinstance(event, RunStarted):
            assert open_turn is None, f"turn {event.turn} started while {open_turn} ran"
            open_turn = event.turn
        elif isinstance(event, (ResponseReceived, RunFailed)):
            assert open_turn == event.turn
            open_turn = None
    assert open_turn is None, f"turn {open_turn} was never closed"


def test_three_processes_sending_to_one_session_take_turns_in_order(tmp_path: Path) -> None:
    path, prompts = tmp_path / "ledger", tmp_path / "prompts"
    prompts.mkdir()
    create_session(path, "shared")
    environment = sender_environment(prompts)
    senders = [start_sender(path, "shared", [f"p{number}-{turn} [[slow 0.2]]"
                                             for turn in range(3)], environment)
               for number in range(3)]
    for sender in senders:
        reports, err = finish(sender)
        assert sender.returncode == 0, err[-2000:]
        assert [report["ok"] for report in reports] == [True] * 3, reports

    records = session_events(path, "shared")
    assert_turns_never_overlap(records)
    sent = [r.event for r in records if isinstance(r.event, MessageSent)]
    assert [event.turn for event in sent] == list(range(1, 10))
    started = [r.event for r in records if isinstance(r.event, RunStarted)]
    assert {event.pid for event in started} == {sender.pid for sender in senders}
    assert all(event.process_started_at > 0 and event.lease_epoch > 0 for event in started)
    answers = [r.event.text for r in records if isinstance(r.event, ResponseReceived)]
    assert answers == [f"echo: {event.text.split(' [[')[0]}" for event in sent]
    # Each prompt (in run order) holds every earlier answer.
    prompt_texts = [file.read_text() for file in sorted(prompts.iterdir())]
    assert len(prompt_texts) == 9
    for number, prompt in enumerate(prompt_texts):
        assert sent[number].text.split(" [[")[0] in prompt
        for earlier in answers[:number]:
            assert earlier in prompt, f"turn {number + 1}'s prompt lacks {earlier!r}"


def test_a_killed_owners_turn_is_taken_over_and_closed_as_interrupted(tmp_path: Path) -> None:
    path, prompts = tmp_path / "ledger", tmp_path / "prompts"
    prompts.mkdir()
    create_session(path, "s")
    environment = sender_environment(prompts)
    owner = start_sender(path, "s", ["long [[slow 60]]"], environment)
    try:
        assert wait_until(lambda: any(isinstance(r.event, RunStarted)
                                      for r in session_events(path, "s")), timeout=30)
        other = start_sender(path, "s", ["after"], environment)
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "ready"
        owner.kill()
        killed_at = time.monotonic()
        owner.wait(timeout=10)
        assert wait_until(lambda: sum(isinstance(r.event, RunStarted)
                                      for r in session_events(path, "s")) == 2,
                          timeout=PROCESS_BOUND)
        handover = time.monotonic() - killed_at
        reports, err = finish(other)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert reports and reports[0]["ok"], err[-2000:]
    assert handover <= HANDOVER_BOUND
    records = session_events(path, "s")
    assert_turns_never_overlap(records)
    events = [r.event for r in records]
    failed = [event for event in events if isinstance(event, RunFailed)]
    assert [(event.turn, event.reason) for event in failed] == [(1, "interrupted")]
    second = [event for event in events if isinstance(event, RunStarted)][1]
    assert second.pid == other.pid and second.lease_epoch >= 2


def test_a_stopped_owner_past_its_lease_cannot_append_afterwards(tmp_path: Path) -> None:
    path, prompts = tmp_path / "ledger", tmp_path / "prompts"
    prompts.mkdir()
    create_session(path, "s")
    environment = sender_environment(prompts, CHATLEDGER_LEASE_TTL="1")
    owner = start_sender(path, "s", ["long [[slow 3]]"], environment)
    try:
        assert wait_until(lambda: any(isinstance(r.event, RunStarted)
                                      for r in session_events(path, "s")), timeout=30)
        os.kill(owner.pid, signal.SIGSTOP)
        other = start_sender(path, "s", ["taken over"], environment)
        other_reports, other_err = finish(other)
        assert other_reports and other_reports[0]["ok"], other_err[-2000:]
        os.kill(owner.pid, signal.SIGCONT)
        owner_reports, owner_err = finish(owner)
    finally:
        if owner.poll() is None:
            os.kill(owner.pid, signal.SIGCONT)
            owner.kill()
            owner.wait()
    assert owner_reports and not owner_reports[0]["ok"]
    records = session_events(path, "s")
    assert_turns_never_overlap(records)
    events = [r.event for r in records]
    assert [type(event).__name__ for event in events] == [
        "SessionCreated", "MessageSent", "RunStarted", "RunFailed",
        "MessageSent", "RunStarted", "ResponseReceived",
    ]
    assert events[3].reason == "interrupted"
    assert events[6].text == "echo: taken over"


def test_commands_from_three_processes_at_once_never_fail_for_a_race(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    create_session(path, "s")
    script = (
        "import sys\n"
        "from chatledger import Ledger\n"
        "ledger = Ledger(sys.argv[1],\n"
        "                agent_command=(sys.executable, '-m', 'chatledger.testing.standin'))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "for number in range(40):\n"
        "    ledger.switch_mode('s', 'power' if number % 2 else 'user')\n"
        "    ledger.set_study('s', f'study-{number}')\n"
        "print('done', flush=True)\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path)], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for _ in range(3)]
    for writer in writers:  # all open, then all at once
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for writer in writers:
        out, err = writer.communicate(timeout=PROCESS_BOUND)
        assert writer.returncode == 0, err[-2000:]
        assert out.strip() == "done"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_uvicorn_workers_give_websocket_clients_their_turns_in_order(
    tmp_path: Path,
) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    websockets_client = pytest.importorskip("websockets.sync.client")
    import threading

    path, prompts = tmp_path / "ledger", tmp_path / "prompts"
    prompts.mkdir()
    create_session(path, "web")
    port = free_port()
    environment = sender_environment(prompts, CHATLEDGER_PATH=str(path))
    examples = Path(__file__).parent.parent / "examples"
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--workers", "2", "--app-dir", str(examples),
         "--host", "127.0.0.1", "--port", str(port), "backend:app"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment,
    )
    url = f"ws://127.0.0.1:{port}/sessions/web/chat"
    answers: dict[str, list[str]] = {}
    failures: list[str] = []

    def turn(socket: Any, message: str) -> str:
        """Run one turn over `socket`; its final text."""
        socket.send(json.dumps({"message": message, "stream_deltas": False}))
        text = ""
        while True:
            update = json.loads(socket.recv(timeout=PROCESS_BOUND))
            if update["type"] == "text":
                text = update["content"]
            if update["type"] == "done":
                return text

    def client(name: str, socket: Any) -> None:
        """Two turns over one websocket; keep each turn's final text."""
        try:
            for number in range(2):
                answers.setdefault(name, []).append(turn(socket, f"{name}-{number} [[slow 0.3]]"))
        except Exception as error:  # reported below, with the server's stderr
            failures.append(f"{name}: {error!r}")

    sockets: list[Any] = []
    stack = contextlib.ExitStack()
    try:
        def serving() -> bool:
            try:
                sockets.append(stack.enter_context(websockets_client.connect(url,
                                                                             open_timeout=1)))
                return True
            except Exception:
                return False

        assert wait_until(serving, timeout=60)
        # Find two sockets served by different workers: a warm-up turn on each names its pid.
        by_worker: dict[int, Any] = {}
        for attempt in range(16):
            if attempt:
                sockets.append(stack.enter_context(websockets_client.connect(url)))
            socket = sockets[-1]
            turn(socket, f"warm-up {attempt}")
            pid = [r.event.pid for r in session_events(path, "web")
                   if isinstance(r.event, RunStarted)][-1]
            by_worker.setdefault(pid, socket)
            if len(by_worker) == 2:
                break
        if len(by_worker) < 2:
            pytest.skip("the kernel gave every connection to one uvicorn worker")
        clients = [threading.Thread(target=client, args=(f"c{n}", socket))
                   for n, socket in enumerate(by_worker.values())]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(PROCESS_BOUND)
    finally:
        with contextlib.suppress(Exception):
            stack.close()
        server.send_signal(signal.SIGINT)
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    assert not failures, (failures, err[-3000:])
    assert sorted(answers) == ["c0", "c1"]
    for name, texts in answers.items():
        assert texts == [f"echo: {name}-0", f"echo: {name}-1"]  # each answer complete
    records = session_events(path, "web")
    assert_turns_never_overlap(records)
    workers = {r.event.pid for r in records if isinstance(r.event, RunStarted)
}
    assert len(workers) == 2
    sent = [r.event.text for r in records if isinstance(r.event, MessageSent)]
    received = [r.event.text for r in records if isinstance(r.event, ResponseReceived)]
    assert received == [f"echo: {text.split(' [[')[0]}" for text in sent]
    prompt_texts = [file.read_text() for file in sorted(prompts.iterdir())]
    for number, prompt in enumerate(prompt_texts):
        for earlier in received[:number]:
            assert earlier in prompt
