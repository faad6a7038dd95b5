"""The subprocess runner, driving real processes (the stand-in agent and small scripts)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import selectors
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from testkit import STANDIN, wait_until

from chatledger.agent import (
    NOT_FOUND_MESSAGE,
    AgentInit,
    AgentResult,
    CancelSwitch,
    RunOutcome,
    TextDelta,
    ToolCallCompleted,
    build_argv,
    extract_modifications,
    human_duration,
    pipes,
    run_agent,
    runner,
)
from chatledger.agent.output_readers import LineSplitter

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

TOOLS = ["Read", "mcp__atomizer-tools__*"]


def standin_argv(output_format: str = "stream-json", *, partial: bool = True,
                 **options: Any) -> list[str]:
    return build_argv(STANDIN, mode="user", output_format=output_format, allowed_tools=TOOLS,
                      include_partial_messages=partial, **options)


def run(message: str, output_format: str = "stream-json", *, partial: bool = True,
        **options: Any) -> RunOutcome:
    options.setdefault("timeout", 20.0)
    return run_agent(standin_argv(output_format, partial=partial), f"## Message\n{message}\n",
                     output_format=output_format, **options)


def process_gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting for a reaper that is not us counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def group_gone(pgid: int) -> bool:
    """True once no live process is left in process group `pgid` (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


def script(tmp_path: Path, source: str) -> list[str]:
    path = tmp_path / "agent.py"
    path.write_text(textwrap.dedent(source))
    return [sys.executable, str(path)]


# -- answers ------------------------------------------------------------------------------


def test_echo_answers_with_text_cost_and_session_id() -> None:
    events: list[Any] = []
    outcome = run("hello there", on_event=events.append)
    assert outcome.ok, outcome
    assert outcome.failure_reason is None and outcome.message == ""
    assert outcome.text == "echo: hello there" and outcome.exit_code == 0
    assert outcome.cost_usd is not None and outcome.cost_usd > 0
    assert outcome.usage is not None and outcome.usage["output_tokens"] > 0
    assert outcome.agent_session_id and outcome.num_turns == 1
    assert outcome.pid is not None and process_gone(outcome.pid)
    assert isinstance(events[0], AgentInit) and isinstance(events[-1], AgentResult)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == outcome.text


def test_a_new_session_id_is_the_agent_session_id() -> None:
    argv = standin_argv(new_session_id="11111111-2222-3333-4444-555555555555")
    outcome = run_agent(argv, "## Message\nhi", timeout=20)
    assert outcome.ok and outcome.agent_session_id == "11111111-2222-3333-4444-555555555555"


def test_text_format_collects_plain_stdout_and_streams_it() -> None:
    events: list[Any] = []
    outcome = run("plain please", "text", on_event=events.append)
    assert outcome.ok and outcome.text == "echo: plain please"
    assert outcome.cost_usd is None and outcome.tool_calls == ()
    assert "".join(e.text for e in events).strip() == outcome.text


def test_canvas_tool_call_is_joined_and_modifications_are_extracted() -> None:
    completed: list[Any] = []
    outcome = run("[[canvas]]", on_event=lambda e: completed.append(e)
                  if isinstance(e, ToolCallCompleted) else None)
    assert outcome.ok, outcome
    (call,) = outcome.tool_calls
    assert call.name == "mcp__atomizer-tools__apply_canvas_change"
    assert call.input["modification"]["action"] == "add_node"
    assert call.output["success"] is True and not call.is_error
    assert [e.tool_call for e in completed] == [call]
    modifications = extract_modifications(outcome.text, outcome.tool_calls)
    assert [m["action"] for m in modifications] == ["add_node", "add_edge"]


def test_a_read_tool_call_keeps_its_string_result() -> None:
    outcome = run("[[tool]]")
    assert outcome.ok and outcome.tool_calls[0].name == "Read"
    assert "stand-in file contents" in outcome.tool_calls[0].output


def test_an_error_result_is_agent_error_even_though_its_subtype_is_success() -> None:
    outcome = run("[[error]]")
    assert not outcome.ok and outcome.failure_reason == "agent_error"
    assert outcome.exit_code == 1 and outcome.api_error_status == 529
    assert "529" in outcome.message and "Overloaded" in outcome.message


def test_a_failing_agent_is_exit_status_with_its_stderr_tail() -> None:
    outcome = run("[[fail]]")
    assert not outcome.ok and outcome.failure_reason == "exit_status" and outcome.exit_code == 1
    assert outcome.message.startswith("CLI error: ")
    assert "failed on purpose" in outcome.stderr_tail and "failed on purpose" in outcome.message


def test_a_missing_claude_binary_is_not_found_with_the_install_hint(tmp_path: Path) -> None:
    outcome = run_agent([str(tmp_path / "no-such-dir" / "claude"), "--print"], "hi", timeout=5)
    assert not outcome.ok and outcome.failure_reason == "not_found"
    assert outcome.message.startswith(
        "Claude CLI not found in PATH. Install with: npm install -g @anthropic-ai/claude-code")
    assert outcome.message.startswith(NOT_FOUND_MESSAGE) and outcome.pid is None


def test_a_missing_other_binary_is_not_found_naming_it_without_the_npm_hint() -> None:
    outcome = run_agent(["no-such-agent-binary-here", "--print"], "hi", timeout=5)
    assert not outcome.ok and outcome.failure_reason == "not_found"
    assert "'no-such-agent-binary-here'" in outcome.message and "npm" not in outcome.message


def test_a_file_that_cannot_be_executed_is_spawn_failed(tmp_path: Path) -> None:
    plain = tmp_path / "claude"
    plain.write_text("not a program")
    plain.chmod(0o644)
    outcome = run_agent([str(plain)], "hi", timeout=5)
    assert outcome.failure_reason == "spawn_failed" and "permission denied" in outcome.message
    missing_cwd = run_agent(STANDIN, "hi", timeout=5, cwd=str(tmp_path / "nowhere"))
    assert missing_cwd.failure_reason == "spawn_failed" and "does not exist" in missing_cwd.message


def test_garbage_lines_are_survived_and_counted() -> None:
    outcome = run("[[garbage]] still here")
    assert outcome.ok and outcome.text == "echo: still here"
    assert outcome.garbage_lines >= 4 and outcome.diagnostics


def test_exit_zero_without_a_result_line_is_a_failure() -> None:
    outcome = run("[[noresult]] hi")
    assert not outcome.ok and outcome.failure_reason == "exit_status" and outcome.exit_code == 0
    assert "agent exited without a result line" in outcome.message
    assert outcome.text == "echo: hi"  # what it did say is kept


def test_output_past_the_cap_stops_the_agent() -> None:
    started = time.monotonic()
    outcome = run("[[huge 50]]", max_output_bytes=1024 * 1024, kill_grace=1.0)
    assert not outcome.ok and outcome.failure_reason == "output_too_large"
    assert "1048576 bytes" in outcome.message
    assert time.monotonic() - started < 5
    assert outcome.pid is not None and wait_until(lambda: process_gone(outcome.pid or 0), 5)


def test_a_single_three_megabyte_line_parses_under_a_larger_cap() -> None:
    outcome = run("[[huge 3]]", max_output_bytes=16 * 1024 * 1024)
    assert outcome.ok, outcome.message
    assert len(outcome.text) == 3 * 1024 * 1024


def test_the_child_environment_bounds_claude_retries(tmp_path: Path) -> None:
    argv = script(tmp_path, """
        import json, os
        print(json.dumps({k: os.environ.get(k) for k in
                          ("CLAUDE_CODE_MAX_RETRIES", "API_TIMEOUT_MS", "MINE")}))
    """)
    outcome = run_agent(argv, "", output_format="text", timeout=7.5, env={"MINE": "x",
                        "PATH": os.environ.get("PATH", "")})
    assert outcome.ok, outcome
    assert json.loads(outcome.text) == {"CLAUDE_CODE_MAX_RETRIES": "2", "API_TIMEOUT_MS": "7500",
                                        "MINE": "x"}


def test_an_agent_inheriting_our_environment_sees_every_change_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The inherited environment is built once and reused while os.environ is unchanged.
    argv = script(tmp_path, """
        import json, os
        print(json.dumps({k: os.environ.get(k) for k in
                          ("CHATLEDGER_TEST_VALUE", "API_TIMEOUT_MS")}))
    """)

    def seen(timeout: float = 20.0) -> dict[str, Any]:
        outcome = run_agent(argv, "", output_format="text", timeout=timeout)
        assert outcome.ok, outcome
        return dict(json.loads(outcome.text))

    monkeypatch.delenv("CHATLEDGER_TEST_VALUE", raising=False)
    monkeypatch.delenv("API_TIMEOUT_MS", raising=False)
    assert seen() == {"CHATLEDGER_TEST_VALUE": None, "API_TIMEOUT_MS": "20000"}
    monkeypatch.setenv("CHATLEDGER_TEST_VALUE", "first")
    assert seen()["CHATLEDGER_TEST_VALUE"] == "first"
    monkeypatch.setenv("CHATLEDGER_TEST_VALUE", "second")
    assert seen()["CHATLEDGER_TEST_VALUE"] == "second"
    assert seen(timeout=9.0)["API_TIMEOUT_MS"] == "9000"
    monkeypatch.delenv("CHATLEDGER_TEST_VALUE")
    assert seen()["CHATLEDGER_TEST_VALUE"] is None


def test_a_child_that_never_reads_a_large_prompt_does_not_deadlock(tmp_path: Path) -> None:
    argv = script(tmp_path, "print('answered without reading')\n")
    outcome = run_agent(argv, "x" * (8 * 1024 * 1024), output_format="text", timeout=10)
    assert outcome.ok and outcome.text == "answered without reading"


def test_a_large_prompt_reaches_stdin_whole() -> None:
    prompt = "## Message\n[[prompt]] " + "p" * (2 * 1024 * 1024)
    outcome = run_agent(standin_argv(), prompt, timeout=20)
    assert outcome.ok and outcome.text == prompt


def test_a_background_process_holding_stdout_does_not_hold_the_run(tmp_path: Path) -> None:
    pid_file = tmp_path / "straggler.pid"
    argv = script(tmp_path, f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("done", flush=True)
    """)
    started = time.monotonic()
    outcome = run_agent(argv, "", output_format="text", timeout=20)
    assert outcome.ok and outcome.text == "done"
    assert time.monotonic() - started < 5
    assert wait_until(lambda: process_gone(int(pid_file.read_text())), 5)


def test_an_agent_killed_by_someone_else_is_interrupted(tmp_path: Path) -> None:
    argv = script(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    outcome = run_agent(argv, "", timeout=10)
    assert outcome.failure_reason == "interrupted" and "SIGKILL" in outcome.message


def test_a_callback_that_raises_does_not_break_the_run() -> None:
    def broken(event: Any) -> None:
        raise RuntimeError("consumer bug")

    outcome = run("still answered", on_event=broken)
    assert outcome.ok and outcome.text == "echo: still answered"



def test_a_prompt_much_larger_than_the_pipe_reaches_a_slow_reader_whole(tmp_path: Path) -> None:
    argv = script(tmp_path, """
        import hashlib, sys, time
        digest, size = hashlib.sha256(), 0
        while chunk := sys.stdin.buffer.read1(65536):
            digest.update(chunk)
            size += len(chunk)
            time.sleep(0.002)
        print(size, digest.hexdigest())
    """)
    prompt = "".join(random.choice("abcdefgh\n") for _ in range(6 * 1024 * 1024))
    outcome = run_agent(argv, prompt, output_format="text", timeout=30)
    expected = hashlib.sha256(prompt.encode()).hexdigest()
    assert outcome.ok, outcome
    assert outcome.text == f"{len(prompt)} {expected}"


def test_an_agent_that_never_reads_stdin_is_heard_while_it_runs(tmp_path: Path) -> None:
    argv = script(tmp_path, """
        import time
        print("answered without reading", flush=True)
        time.sleep(0.8)
    """)
    stamps: list[float] = []
    outcome = run_agent(argv, "x" * (8 * 1024 * 1024), output_format="text", timeout=10,
                        on_event=lambda event: stamps.append(time.monotonic()))
    finished = time.monotonic()
    assert outcome.ok and outcome.text == "answered without reading"
    assert stamps and finished - stamps[0] > 0.5  # heard long before it exited


def test_an_agent_that_closes_stdout_but_keeps_running_times_out(tmp_path: Path) -> None:
    argv = script(tmp_path, """
        import os, sys, time
        print("partial", flush=True)
        os.close(1)
        time.sleep(30)
    """)
    started = time.monotonic()
    outcome = run_agent(argv, "", output_format="text", timeout=1.0, kill_grace=0.5)
    assert outcome.failure_reason == "timeout" and outcome.text == "partial"
    assert 1.0 <= time.monotonic() - started < 4
    assert outcome.pid is not None and wait_until(lambda: group_gone(outcome.pid or 0), 5)


def test_a_large_stderr_never_blocks_the_agent_and_only_its_tail_is_kept(
    tmp_path: Path,
) -> None:
    argv = script(tmp_path, """
        import sys
        sys.stderr.write("noise " * 200_000 + "last words")
        sys.stderr.flush()
        print("still answered", flush=True)
        sys.exit(1)
    """)
    outcome = run_agent(argv, "", output_format="text", timeout=10, stderr_tail_bytes=100)
    assert outcome.failure_reason == "exit_status" and outcome.text == "still answered"
    assert outcome.stderr_tail.endswith("last words") and len(outcome.stderr_tail) <= 100


def open_descriptors() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_runs_leave_no_file_descriptor_open(tmp_path: Path) -> None:
    before = open_descriptors()
    assert run("hello").ok
    assert run("[[slow 30]]", timeout=0.5, kill_grace=0.2).failure_reason == "timeout"
    assert run("[[huge 3]]", max_output_bytes=1024 * 1024).failure_reason == "output_too_large"
    never_reads = script(tmp_path, "print('done')\n")
    assert run_agent(never_reads, "x" * (4 * 1024 * 1024), output_format="text",
                     timeout=10).ok
    assert open_descriptors() == before


class Escaped(BaseException):
    """Not an Exception: `on_event` errors of this kind end the run."""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_an_exception_escaping_the_run_kills_the_agent_and_closes_its_pipes(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "agent.pid"
    argv = script(tmp_path, f"""
        import os, signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print("started", flush=True)
        time.sleep(60)
    """)

    def on_event(event: Any) -> None:
        raise Escaped

    before = open_descriptors()
    started = time.monotonic()
    with pytest.raises(Escaped):
        run_agent(argv, "", output_format="text", timeout=20, on_event=on_event)
    assert time.monotonic() - started < 5
    assert open_descriptors() == before
    assert wait_until(lambda: process_gone(int(pid_file.read_text())), 5)


def test_a_run_starts_no_threads() -> None:
    before = threading.active_count()
    during: list[int] = []
    outcome = run("[[slow 0.6]] a b c d", on_event=lambda e: during.append(
        threading.active_count()))
    assert outcome.ok and during
    assert max(during) <= before


def test_the_thread_based_pipes_used_where_selectors_cannot_wait_on_pipes_still_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setattr(pipes, "PIPES_SELECTABLE", False)
    before = threading.active_count()
    during: list[int] = []
    assert run("hello", on_event=lambda e: during.append(threading.active_count())).ok
    assert max(during) > before  # the helper threads did serve the pipes
    prompt = "## Message\n[[prompt]] " + "p" * (2 * 1024 * 1024)
    assert run_agent(standin_argv(), prompt, timeout=20).text == prompt
    assert run("[[slow 30]]", timeout=0.5, kill_grace=0.2).failure_reason == "timeout"
    assert "failed on purpose" in run("[[fail]]").stderr_tail


# -- time limits and cancellation ---------------------------------------------------------


def test_a_timeout_stops_the_agent_and_its_process_group() -> None:
    started = time.monotonic()
    outcome = run("[[slow 30]]", timeout=1.5, kill_grace=1.0)
    elapsed = time.monotonic() - started
    assert not outcome.ok and outcome.failure_reason == "timeout"
    assert outcome.message == "Response timeout (1.5 seconds)"
    assert 1.5 <= elapsed < 4
    assert outcome.exit_code == 0  # SIGINT came first: the agent ended its own way
    pid = outcome.pid
    assert pid is not None
    assert wait_until(lambda: process_gone(pid) and group_gone(pid), 5)


def test_a_timeout_kills_the_children_the_agent_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("CHATLEDGER_STANDIN_CHILD_PID_FILE", str(pid_file))
    outcome = run("[[spawn]]", timeout=2.0, kill_grace=0.5)
    assert outcome.failure_reason == "timeout"
    child = int(pid_file.read_text().split()[0])
    assert f"started child process {child}" in outcome.stderr_tail
    assert wait_until(lambda: process_gone(child), 5)
    assert outcome.pid is not None and wait_until(lambda: group_gone(outcome.pid or 0), 5)


def test_an_agent_ignoring_sigint_and_sigterm_is_killed_after_the_grace() -> None:
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def on_event(event: Any) -> None:
        if isinstance(event, AgentInit):  # its signals are ignored by now
            cancelled_at.append(time.monotonic())
            cancel.set()

    outcome = run("[[ignore-term 60]]", kill_grace=0.4, on_event=on_event, cancel=cancel)
    elapsed = time.monotonic() - cancelled_at[0]
    assert outcome.failure_reason == "cancelled"
    assert outcome.exit_code == -signal.SIGKILL
    assert 2 * 0.4 <= elapsed < 4  # SIGINT, a grace, SIGTERM, a grace, SIGKILL
    assert outcome.pid is not None and process_gone(outcome.pid)


def test_cancelling_mid_run_stops_the_agent_and_reports_cancelled() -> None:
    cancel = threading.Event()
    seen: list[Any] = []

    def on_event(event: Any) -> None:
        seen.append(event)
        if isinstance(event, TextDelta):
            cancel.set()

    started = time.monotonic()
    outcome = run("[[slow 30]] " + "word " * 100, on_event=on_event, cancel=cancel)
    assert not outcome.ok and outcome.failure_reason == "cancelled"
    assert time.monotonic() - started < 5
    assert outcome.exit_code == 0  # SIGINT first: the stand-in printed claude's interrupted result
    assert isinstance(seen[-1], AgentResult) and seen[-1].subtype == "error_during_execution"
    assert outcome.text.startswith("echo: ")  # the partial answer it had given
    assert outcome.pid is not None and process_gone(outcome.pid)


def test_a_run_cancelled_before_it_starts_starts_nothing() -> None:
    cancel = threading.Event()
    cancel.set()
    outcome = run("hi", cancel=cancel)
    assert outcome.failure_reason == "cancelled" and outcome.pid is None


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the exit wakes the loop via a pidfd")
def test_with_a_cancel_switch_a_silent_agent_costs_no_polling(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    waits: list[float | None] = []

    class CountingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
        def select(self, timeout: float | None = None) -> Any:
            waits.append(timeout)
            return super().select(timeout)

    monkeypatch.setattr(selectors, "DefaultSelector", CountingSelector)
    argv = script(tmp_path, "import time\ntime.sleep(1.5)\nprint('done')\n")
    outcome = run_agent(argv, "", output_format="text", timeout=20, cancel=CancelSwitch())
    assert outcome.ok and outcome.text == "done"
    assert len(waits) <= 6  # the output, the exit and end of output wake it; nothing else
    waits.clear()  # a plain Event cannot wake the loop: it looks every POLL_SECONDS
    assert run_agent(argv, "", output_format="text", timeout=20,
                     cancel=threading.Event()).ok
    assert len(waits) >= 1.5 / runner.POLL_SECONDS / 2


def test_a_cancel_switch_flipped_by_another_thread_stops_a_silent_agent_at_once(
    tmp_path: Path,
) -> None:
    argv = script(tmp_path, "import time\ntime.sleep(60)\n")
    switch = CancelSwitch()
    threading.Timer(0.5, switch.set).start()
    started = time.monotonic()
    outcome = run_agent(argv, "", output_format="text", timeout=30, cancel=switch,
                        kill_grace=0.5)
    assert outcome.failure_reason == "cancelled"
    assert time.monotonic() - started < 3  # not after the loop's 5-second safety sleep
    assert outcome.pid is not None and wait_until(lambda: process_gone(outcome.pid or 0), 5)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_cancel_switch_outlives_its_runs_without_holding_anything() -> None:
    switch = CancelSwitch()
    before = open_descriptors()
    for _ in range(3):
        assert run("hello", cancel=switch).ok
    assert open_descriptors() == before
    switch.set()  # rings no bell of a finished run
    assert run("hello", cancel=switch).failure_reason == "cancelled"
    assert open_descriptors() == before


def test_events_arrive_while_the_agent_is_still_running() -> None:
    stamps: list[tuple[float, Any]] = []
    outcome = run("[[slow 1.2]] a b c d e f",
                  on_event=lambda e: stamps.append((time.monotonic(), e)))
    finished = time.monotonic()
    assert outcome.ok
    deltas = [stamp for stamp, event in stamps if isinstance(event, TextDelta)]
    assert len(deltas) >= 5
    assert finished - deltas[0] > 0.6  # the first delta came long before the end
    assert deltas == sorted(deltas)


def test_without_partial_messages_text_arrives_per_block() -> None:
    events: list[Any] = []
    outcome = run("[[canvas]]", partial=False, on_event=events.append)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert outcome.ok and len(deltas) == 2 and deltas[-1] == outcome.text


# -- pieces -------------------------------------------------------------------------------


def test_human_durations() -> None:
    assert human_duration(300) == "5 minutes"
    assert human_duration(60) == "1 minute"
    assert human_duration(3600) == "1 hour"
    assert human_duration(90) == "90 seconds"
    assert human_duration(1.0) == "1 second"
    assert human_duration(2.5) == "2.5 seconds"


def test_the_line_splitter_handles_any_chunking() -> None:
    lines = [b"a" * random.randint(0, 300_000) for _ in range(8)] + [b"", b"{}", b"x\r"]
    data = b"\n".join(lines) + b"\ntail-without-newline"
    for _ in range(5):
        splitter = LineSplitter()
        got: list[bytes] = []
        position = 0
        while position < len(data):
            size = random.choice([1, 7, 4096, 65536, 1_000_000])
            got += splitter.feed(data[position : position + size])
            position += size
        assert got == lines and splitter.rest() == b"tail-without-newline"


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError):
        run_agent([], "hi")
    with pytest.raises(ValueError, match="output format"):
        run_agent(STANDIN, "hi", output_format="json")
    with pytest.raises(ValueError, match="timeout"):
        run_agent(STANDIN, "hi", timeout=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux only")
def test_the_stdout_pipe_is_enlarged_so_an_agent_exiting_at_once_loses_nothing(
    tmp_path: Path,
) -> None:
    # The real claude drops what it still has queued for a full pipe when it exits: with
    # 64 KiB pipes about half of all 1 MB answers lost their result line.
    argv = script(tmp_path, """
        import fcntl, sys, time
        deadline = time.monotonic() + 5
        size = fcntl.fcntl(1, 1032)  # F_GETPIPE_SZ
        while size < 1024 * 1024 and time.monotonic() < deadline:
            time.sleep(0.01)
            size = fcntl.fcntl(1, 1032)
        print(size)
    """)
    expected = min(1024 * 1024, int(Path("/proc/sys/fs/pipe-max-size").read_text()))
    outcome = run_agent(argv, "", output_format="text", timeout=10)
    assert outcome.ok and int(outcome.text) == expected
