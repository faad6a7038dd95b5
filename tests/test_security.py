"""Security: the power-mode gate, private MCP config files, an environment that is never
recorded, a recorded argv that is the one really run, and agent output that cannot make
chatledger run anything or write anywhere but the ledger.

(The HTML transcript's escaping is tested with the CLI.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from testkit import STANDIN, open_ledger, wait_until

from chatledger import SessionManager
from chatledger.errors import InvalidCommandError
from chatledger.events import CanvasModified, ResponseReceived, RunStarted, event_to_builtins
from chatledger.storage import EventLog

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(),
                                reason="reads /proc (Linux)")

RECORDING_AGENT = (sys.executable, str(Path(__file__).parent / "support" / "recording_agent.py"))


def runs_recorded(directory: Path) -> list[dict[str, Any]]:
    """What the recording agent wrote, in the order the runs started."""
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def every_file(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under `root`."""
    return {str(path.relative_to(root)): path.read_bytes()
            for path in root.rglob("*") if path.is_file()}


@pytest.fixture
def mcp_servers_file(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An MCP servers file whose server environment holds a secret."""
    secret = f"mcp-token-{uuid.uuid4().hex}"
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"mcpServers": {"atomizer-tools": {
        "command": "python", "args": ["-m", "atomizer_tools"], "env": {"TOKEN": secret}}}}))
    yield path, secret


# -- the power-mode gate ------------------------------------------------------------------


def test_a_deployment_that_disallows_power_mode_refuses_it_everywhere(ledger_path: Path) -> None:
    with open_ledger(ledger_path, allow_power_mode=False) as ledger:
        for attempt in (lambda: ledger.create_session(mode="power"),
                        lambda: ledger.create_session("fresh", mode="power"),
                        lambda: ledger.resume_session("fresh-2", mode="power")):
            with pytest.raises(InvalidCommandError, match="power mode is not allowed"):
                attempt()
        session_id = ledger.create_session().session_id
        with pytest.raises(InvalidCommandError, match="CHATLEDGER_ALLOW_POWER_MODE"):
            ledger.switch_mode(session_id, "power")
        with pytest.raises(InvalidCommandError, match="power mode"):
            ledger.resume_session(session_id, mode="power")
        assert [(info.session_id, info.mode) for info in ledger.sessions()] == [
            (session_id, "user")]


def test_the_gate_can_be_closed_by_environment_variable_for_the_async_manager(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATLEDGER_ALLOW_POWER_MODE", "no")

    async def scenario() -> None:
        manager = SessionManager(path=str(ledger_path), agent_command=STANDIN, timeout=30)
        try:
            with pytest.raises(ValueError, match="power mode is not allowed"):
                await manager.create_session(mode="power")
            session = await manager.create_session()
            with pytest.raises(ValueError, match="power mode is not allowed"):
                await manager.switch_mode(session.session_id, "power")
        finally:
            await manager.stop()

    asyncio.run(scenario())


def test_a_power_session_from_a_permissive_process_runs_no_turn_where_power_is_disallowed(
    ledger_path: Path,
) -> None:
    with open_ledger(ledger_path, allow_power_mode=True) as permissive:
        session_id = permissive.create_session(mode="power").session_id
    with open_ledger(ledger_path, allow_power_mode=False) as strict:
        with pytest.raises(InvalidCommandError, match="switch it to user mode"):
            strict.send(session_id, "hello", timeout=30)
        assert not any(isinstance(r.event, RunStarted) for r in strict.events(session_id))
        strict.switch_mode(session_id, "user")
        outcome = strict.send(session_id, "hello")
        assert outcome.ok, outcome.error
        started = [r.event for r in strict.events(session_id) if isinstance(r.event, RunStarted)]
        assert "--dangerously-skip-permissions" not in started[0].argv
        assert any(word.startswith("--allowedTools=") for word in started[0].argv)


# -- MCP config files ---------------------------------------------------------------------


def test_mcp_config_files_are_0600_in_a_private_0700_directory_and_removed_when_done(
    ledger_path: Path, tmp_path: Path, mcp_servers_file: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servers, _ = mcp_servers_file
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("CHATLEDGER_TEST_RUN_RECORD", str(runs))
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    EventLog(ledger_path).close()
    (ledger_path / "mcp").mkdir(mode=0o777)
    os.chmod(ledger_path / "mcp", 0o777)  # a loose directory left behind gets tightened
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        with open_ledger(ledger_path, agent_command=RECORDING_AGENT,
                         mcp_config=str(servers)) as ledger:
            session_id = ledger.create_session().session_id
            assert ledger.send(session_id, "one").ok
            power_id = ledger.create_session(mode="power").session_id
            assert ledger.send(power_id, "two").ok
            seen = [run["mcp"] for run in runs_recorded(runs)]
            assert len(seen) == 2 and seen[0]["path"] != seen[1]["path"]
            for mcp in seen:
                assert mcp["mode"] == 0o600 and mcp["directory_mode"] == 0o700
                assert Path(mcp["path"]).parent == (ledger_path / "mcp").resolve()
                assert mcp["servers"] == json.loads(servers.read_text())["mcpServers"]
                assert session_id not in mcp["path"]  # file names are hashes of the ids
            assert list(workdir.iterdir()) == []  # never in the working directory
            assert all(Path(mcp["path"]).exists() for mcp in seen)
            assert wait_until(lambda: ledger.passivate(session_id))
            assert not Path(seen[0]["path"]).exists() and Path(seen[1]["path"]).exists()
            assert ledger.send(session_id, "three").ok  # written afresh on reactivation
            assert Path(seen[0]["path"]).exists()
        assert sorted(p.name for p in (ledger_path / "mcp").iterdir()) == []
        assert stat.S_IMODE((ledger_path / "mcp").stat().st_mode) == 0o700
    finally:
        os.umask(old_umask)


def test_the_async_manager_removes_mcp_config_files_when_it_stops(
    ledger_path: Path, tmp_path: Path, mcp_servers_file: tuple[Path, str],
) -> None:
    servers, _ = mcp_servers_file

    async def scenario() -> None:
        manager = SessionManager(path=str(ledger_path), agent_command=STANDIN, timeout=30,
                                 mcp_config=str(servers))
        session = await manager.create_session()
        items = [item async for item in manager.send_message(session.session_id, "hi")]
        assert items[-1]["type"] == "done"
        assert len(list((ledger_path / "mcp").glob("*.json"))) == 1
        await manager.stop()

    asyncio.run(scenario())
    assert list((ledger_path / "mcp").iterdir()) == []


def test_an_mcp_directory_that_is_a_symlink_is_refused_and_nothing_is_written_through_it(
    ledger_path: Path, tmp_path: Path, mcp_servers_file: tuple[Path, str],
) -> None:
    servers, _ = mcp_servers_file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    EventLog(ledger_path).close()
    (ledger_path / "mcp").symlink_to(elsewhere)
    with open_ledger(ledger_path, mcp_config=str(servers)) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "hi")
        assert not outcome.ok and "link" in (outcome.error or "")
    assert list(elsewhere.iterdir()) == []


# -- what is recorded: never the environment; the argv really run ---------------------------


def test_the_environment_is_never_recorded_and_the_recorded_argv_is_the_one_run(
    ledger_path: Path, tmp_path: Path, mcp_servers_file: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servers, mcp_secret = mcp_servers_file
    api_key = f"sk-ant-api03-{uuid.uuid4().hex}"
    extra_secret = f"extra-{uuid.uuid4().hex}"
    secrets = [api_key, extra_secret, mcp_secret]
    runs, prompts = tmp_path / "runs", tmp_path / "prompts"
    runs.mkdir()
    prompts.mkdir()
    monkeypatch.setenv("ANTHROPIC_API_KEY", api_key)
    monkeypatch.setenv("CHATLEDGER_TEST_RUN_RECORD", str(runs))
    monkeypatch.setenv("CHATLEDGER_STANDIN_RECORD", str(prompts))
    messages = ["hello", "[[canvas]]", "[[tool]]", "[[fail]]", "[[garbage]]", "[[error]]"]
    with open_ledger(ledger_path, agent_command=RECORDING_AGENT, mcp_config=str(servers),
                     agent_env={"CHATLEDGER_TEST_EXTRA_SECRET": extra_secret}) as ledger:
        session_id = ledger.create_session(study_id="s1").session_id
        for message in messages:
            ledger.send(session_id, message)
        ledger.switch_mode(session_id, "power")
        assert ledger.send(session_id, "as power").ok
        records = ledger.events(session_id)
    started = [r.event for r in records if isinstance(r.event, RunStarted)]
    recorded_runs = runs_recorded(runs)
    recorded_prompts = [p.read_bytes() for p in sorted(prompts.iterdir())]
    assert len(started) == len(recorded_runs) == len(recorded_prompts) == len(messages) + 1
    for event, run, prompt in zip(started, recorded_runs, recorded_prompts, strict=True):
        assert list(event.argv) == run["cmdline"]  # exactly what the kernel started
        assert event.prompt_digest == "sha256:" + hashlib.sha256(prompt).hexdigest()
        assert run["api_key"] == api_key and run["extra"] == extra_secret  # passed, ...
    assert "--dangerously-skip-permissions" in started[-1].argv
    assert "--dangerously-skip-permissions" not in started[0].argv
    # ... but never recorded: not in any byte of the ledger, nor in any decoded event.
    files = every_file(ledger_path)
    assert "data.mdb" in files
    for name, content in files.items():
        for secret in secrets:
            assert secret.encode() not in content, (name, secret)
    with EventLog(ledger_path) as log:
        decoded = [msgspec.json.encode(event_to_builtins(r.event)).decode()
                   for r in log.read_all()]
        envelopes = [repr(r) for r in log.read_all()]
    assert decoded and envelopes
    for text in decoded + envelopes:
        for secret in secrets:
            assert secret not in text


# -- agent output cannot make chatledger run anything or write outside the ledger ----------

HOSTILE_AGENT = r"""
import json, os, sys
prompt = sys.stdin.read()
canary, outside = os.environ["CANARY"], os.environ["OUTSIDE"]
shell = [f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}", f"| touch {canary}",
         f"&& touch {canary}", f"\n touch {canary}\n", "${IFS}", "%(x)s {0}"]
traversal = {"action": "write_file", "path": f"../../../../{outside}/evil.txt",
             "file": "/etc/passwd", "target": "~/.ssh/authorized_keys",
             "command": f"touch {canary}"}
def line(message):
    sys.stdout.write(json.dumps(message) + "\n")
line({"type": "system", "subtype": "init", "session_id": "--dangerously-skip-permissions",
      "model": shell[0], "cwd": shell[1], "tools": shell, "mcp_servers": [{"name": shell[2]}]})
line({"type": "assistant", "message": {"id": "m1", "content": [
    {"type": "text", "text": " ".join(shell)},
    {"type": "tool_use", "id": "t1", "name": f"Bash; touch {canary}",
     "input": {"command": f"touch {canary}", "modification": traversal}},
    {"type": "tool_use", "id": "t2", "name": "mcp__x__apply_canvas_change",
     "input": {"modification": traversal}}]}})
line({"type": "user", "message": {"content": [
    {"type": "tool_result", "tool_use_id": "t1", "content": shell[3]},
    {"type": "tool_result", "tool_use_id": "t2",
     "content": json.dumps({"modification": traversal})}]}})
sys.stderr.write(" ".join(shell) + "\n")
answer = ("Done " + " ".join(shell) + "\n```json\n" + json.dumps({"modification": traversal})
          + "\n```\n")
session_ids = ["--dangerously-skip-permissions", "x\n--dangerously-skip-permissions",
               f"$(touch {canary})", "../../etc/passwd"]
line({"type": "result", "subtype": "success", "is_error": False, "result": answer,
      "session_id": session_ids[len(prompt) % 4], "total_cost_usd": 0.0})
"""


def test_nothing_the_agent_prints_makes_chatledger_run_or_write_anything(
    ledger_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    canary = tmp_path / "PWNED"
    outside = tmp_path / "outside"
    outside.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    agent = tmp_path / "hostile_agent.py"
    agent.write_text(HOSTILE_AGENT)
    monkeypatch.setenv("CANARY", str(canary))
    monkeypatch.setenv("OUTSIDE", str(outside))
    monkeypatch.chdir(workdir)
    before = set(every_file(tmp_path))
    with open_ledger(ledger_path, agent_command=(sys.executable, str(agent)),
                     history_strategy="resume", agent_cwd=str(workdir)) as ledger:
        session_id = ledger.create_session().session_id
        outcomes = [ledger.send(session_id, "x" * turn) for turn in range(1, 6)]
        assert all(outcome.ok for outcome in outcomes), [o.error for o in outcomes]
        records = ledger.events(session_id)
        assert ledger.verify().ok
    assert not canary.exists()
    assert list(outside.iterdir()) == [] and list(workdir.iterdir()) == []
    created = set(every_file(tmp_path)) - before
    # The ledger, and beside it its signing key and anchor file (chatledger's own).
    evidence = {"ledger.signing-key", "ledger.signing-key.pub", "ledger.anchors.jsonl"}
    assert all(name.startswith("ledger/") or name in evidence for name in created), created
    # The agent's session ids never reach an argv: not one poses as a flag.
    for event in (r.event for r in records if isinstance(r.event, RunStarted)):
        assert "--dangerously-skip-permissions" not in event.argv
        assert not any(word.startswith("--resume") for word in event.argv)
        assert event.argv[:2] == (sys.executable, str(agent))
    # What it printed is kept as data, verbatim.
    modifications = [r.event.modification for r in records if isinstance(r.event, CanvasModified)]
    assert modifications and all(m["path"].startswith("../../") for m in modifications)
    answer = next(r.event for r in records if isinstance(r.event, ResponseReceived))
    assert f"$(touch {canary})" in answer.text


def test_a_safe_agent_session_id_is_still_resumed(
    ledger_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATLEDGER_STANDIN_SESSIONS", str(tmp_path / "standin-sessions"))
    with open_ledger(ledger_path, history_strategy="resume") as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "first").ok
        assert ledger.send(session_id, "second").ok
        started = [r.event for r in ledger.events(session_id) if isinstance(r.event, RunStarted)]
        agent_session = ledger.info(session_id).agent_session_id  # type: ignore[union-attr]
    assert agent_session and not any(word.startswith("--resume") for word in started[0].argv)
    assert started[1].argv[-1] == f"--resume={agent_session}"


KEEP_A_FILE_AND_DIE = r"""
import sys, time
from chatledger.agent import McpConfigFiles
files = McpConfigFiles(sys.argv[1])
print(files.path_for(sys.argv[2], "user", {"s": {"command": "x", "env": {"T": sys.argv[3]}}}),
      flush=True)
time.sleep(float(sys.argv[4]))
"""


def test_mcp_files_of_a_killed_process_are_removed_and_a_live_ones_are_kept(
    ledger_path: Path, mcp_servers_file: tuple[Path, str],
) -> None:
    import signal
    import subprocess

    servers, _ = mcp_servers_file
    EventLog(ledger_path).close()
    directory = ledger_path / "mcp"

    def holder(session_id: str, seconds: str) -> tuple[subprocess.Popen[str], Path]:
        process = subprocess.Popen(
            [sys.executable, "-c", KEEP_A_FILE_AND_DIE, str(directory), session_id,
             f"secret-{session_id}", seconds], stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        return process, Path(process.stdout.readline().strip())

    killed, killed_file = holder("crashed-backend", "60")
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    live, live_file = holder("other-backend", "60")
    try:
        assert killed_file.exists() and live_file.exists()
        with open_ledger(ledger_path, mcp_config=str(servers)) as ledger:
            assert not killed_file.exists()  # a dead process's secrets do not linger
            session_id = ledger.create_session().session_id
            assert ledger.send(session_id, "hi").ok
            assert live_file.exists()
        assert live_file.exists()  # closing never deletes a live process's file
        assert [p for p in directory.iterdir()] == [live_file]
    finally:
        live.kill()
        live.wait(10)
