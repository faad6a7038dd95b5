"""Session actors, supervisor and run pool, with real pykka actors, real LMDB and the
stand-in agent as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pykka
import pytest
from testkit import STANDIN, open_ledger, pid_alive, wait_until

from chatledger.actors.updates import (
    AnyTurnUpdate,
    CanvasModificationUpdate,
    ErrorUpdate,
    TextUpdate,
    TurnDone,
)
from chatledger.errors import InvalidCommandError, UnknownSessionError
from chatledger.events import (
    MessageSent,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionExpired,
)
from chatledger.ledger import Ledger


def standin_pids(marker: str) -> list[int]:
    """Pids of live stand-in agents whose command line or environment mentions `marker`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if (b".standin" in cmdline and marker.encode() in environ
                and pid_alive(int(entry))):
            pids.append(int(entry))
    return pids


@pytest.fixture
def ledger(store_location: str) -> Any:
    """A ledger over each store in turn (tests that need files or processes use ledger_path)."""
    with open_ledger(store_location) as opened:
        yield opened


def test_a_turn_records_message_run_and_answer(ledger: Ledger) -> None:
    session = ledger.create_session(study_id="s-1")
    outcome = ledger.send(session.session_id, "hello there")
    assert outcome.ok, outcome
    assert "hello there" in outcome.text
    events = [r.event for r in ledger.events(session.session_id)]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SessionCreated", "MessageSent", "RunStarted", "ResponseReceived"]
    started = events[2]
    assert isinstance(started, RunStarted)
    assert started.argv[: len(STANDIN)] == STANDIN
    assert "--print" in started.argv and started.prompt_digest.startswith("sha256:")
    assert started.pid == os.getpid()
    info = ledger.info(session.session_id)
    assert info is not None and info.message_count == 2 and info.status == "idle"
    assert [m.role for m in ledger.history(session.session_id)] == ["user", "assistant"]


def test_three_concurrent_sends_run_in_order_and_each_prompt_holds_earlier_answers(
    ledger_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "prompts"
    record.mkdir()
    monkeypatch.setenv("CHATLEDGER_STANDIN_RECORD", str(record))
    with open_ledger(ledger_path) as ledger:
        session_id = ledger.create_session().session_id
        outcomes: dict[str, Any] = {}
        barrier = threading.Barrier(3)

        def send(text: str) -> None:
            barrier.wait(5)
            outcomes[text] = ledger.send(session_id, f"{text} [[slow 0.3]]")

        threads = [threading.Thread(target=send, args=(t,)) for t in ("alpha", "beta", "gamma")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert all(o.ok for o in outcomes.values()), outcomes
        events = [r.event for r in ledger.events(session_id)][1:]
        # Strictly ordered: each turn's message, run and answer before the next message.
        turns = [getattr(e, "turn", None) for e in events]
        assert turns == sorted(turns) and turns[0] == 1 and turns[-1] == 3
        sent = [e.text for e in events if isinstance(e, MessageSent)]
        answers = [e.text for e in events if isinstance(e, ResponseReceived)]
        assert len(answers) == 3
    prompts = [p.read_text() for p in sorted(record.iterdir(), key=lambda p: p.stat().st_mtime)]
    assert len(prompts) == 3
    for index in (1, 2):
        for earlier in answers[:index]:
            assert earlier in prompts[index]
        assert sent[index] in prompts[index]


def test_the_run_pool_bounds_concurrent_agent_processes(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = f"pool-bound-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv("CHATLEDGER_TEST_MARKER", marker)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.wait(0.01):
            peak = max(peak, len(standin_pids(marker)))

    with open_ledger(ledger_path, max_runs=3) as ledger:
        sessions = [ledger.create_session().session_id for _ in range(9)]
        watcher = threading.Thread(target=watch)
        watcher.start()
        results: list[Any] = []
        threads = [
            threading.Thread(target=lambda s=s: results.append(ledger.send(s, "[[slow 0.6]]")))
            for s in sessions
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stop.set()
        watcher.join(5)
        assert len(results) == 9 and all(r.ok for r in results)
    assert 1 < peak <= 3


def test_a_timed_out_agent_and_its_children_are_dead_afterwards(
    ledger_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("CHATLEDGER_STANDIN_CHILD_PID_FILE", str(pid_file))
    with open_ledger(ledger_path, timeout=1.5) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "[[spawn]]")
        assert not outcome.ok and outcome.reason == "timeout"
        failed = ledger.events(session_id)[-1].event
        assert isinstance(failed, RunFailed) and failed.reason == "timeout"
        assert "timeout" in failed.message.lower()
    child = int(pid_file.read_text().split()[0])
    assert wait_until(lambda: not pid_alive(child), 5)


def test_missing_agent_binary_is_recorded_with_the_install_hint(ledger_path: Path) -> None:
    with open_ledger(ledger_path, agent_command=(str(ledger_path.parent / "bin" / "claude"),)) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "hi")
        assert not outcome.ok and outcome.reason == "not_found"
        assert outcome.error is not None
        assert "npm install -g @anthropic-ai/claude-code" in outcome.error
        failed = ledger.events(session_id)[-1].event
        assert isinstance(failed, RunFailed) and failed.reason == "not_found"


@pytest.mark.parametrize(
    ("marker", "reason"),
    [("[[fail]]", "exit_status"), ("[[error]]", "agent_error"), ("[[noresult]]", "exit_status")],
)
def test_failing_agents_become_run_failed_with_a_reason(
    ledger: Ledger, marker: str, reason: str
) -> None:
    session_id = ledger.create_session().session_id
    outcome = ledger.send(session_id, marker)
    assert not outcome.ok and outcome.reason == reason
    assert [type(u) for u in outcome.updates][-2:] == [ErrorUpdate, TurnDone]
    failed = ledger.events(session_id)[-1].event
    assert isinstance(failed, RunFailed) and failed.reason == reason and failed.message
    # The session goes on after a failure.
    assert ledger.send(session_id, "again").ok


def test_garbage_lines_do_not_break_a_turn(ledger: Ledger) -> None:
    session_id = ledger.create_session().session_id
    outcome = ledger.send(session_id, "[[garbage]]")
    assert outcome.ok, outcome


def test_canvas_changes_from_tool_results_and_text_are_recorded_and_streamed(
    ledger: Ledger,
) -> None:
    session_id = ledger.create_session().session_id
    outcome = ledger.send(session_id, "[[canvas]]", canvas_state={"nodes": [1]})
    assert outcome.ok, outcome
    kinds = [type(u) for u in outcome.updates]
    assert kinds.count(CanvasModificationUpdate) >= 2
    assert kinds[-2:] == [TextUpdate, TurnDone]
    assert kinds.index(CanvasModificationUpdate) < kinds.index(TextUpdate)
    recorded = [r.event for r in ledger.events(session_id)
                if type(r.event).__name__ == "CanvasModified"]
    assert [e.modification for e in recorded] == outcome.canvas_modifications  # type: ignore[attr-defined]
    assert outcome.tool_calls and outcome.tool_calls[0]["name"].endswith("apply_canvas_change")


def test_a_huge_output_hits_the_cap(ledger_path: Path) -> None:
    with open_ledger(ledger_path, max_output_bytes=8 * 1024 * 1024) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "[[huge 100]]")
        assert not outcome.ok and outcome.reason == "output_too_large"


def test_power_mode_is_refused_when_disallowed(ledger_path: Path) -> None:
    with open_ledger(ledger_path, allow_power_mode=False) as ledger:
        with pytest.raises(InvalidCommandError, match="power mode"):
            ledger.create_session(mode="power")
        session_id = ledger.create_session().session_id
        with pytest.raises(InvalidCommandError, match="power mode"):
            ledger.switch_mode(session_id, "power")
        with pytest.raises(InvalidCommandError, match="unknown mode"):
            ledger.switch_mode(session_id, "root")
        assert ledger.info(session_id).mode == "user"  # type: ignore[union-attr]


def test_unknown_sessions_and_bad_canvas_state_are_refused(ledger: Ledger) -> None:
    with pytest.raises(UnknownSessionError):
        ledger.send("never-created", "hi")
    session_id = ledger.create_session().session_id
    with pytest.raises(InvalidCommandError, match="JSON"):
        ledger.send(session_id, "hi", canvas_state={"bad": object()})
    assert len(ledger.events(session_id)) == 1


def test_passivate_then_reactivate_gives_identical_state(ledger: Ledger) -> None:
    session_id = ledger.create_session(study_id="x").session_id
    assert ledger.send(session_id, "one").ok
    before = ledger.runtime.live_info(session_id)
    assert ledger.passivate(session_id)
    assert session_id not in ledger.runtime.live_sessions()
    after = ledger.runtime.live_info(session_id)
    assert after == before
    assert ledger.send(session_id, "two").ok
    assert ledger.info(session_id).turn_count == 2  # type: ignore[union-attr]


def test_live_actors_are_capped_and_the_least_recently_used_idle_ones_passivated(
    ledger_path: Path,
) -> None:
    with open_ledger(ledger_path, max_live_sessions=3) as ledger:
        busy = ledger.create_session().session_id
        outcome: list[Any] = []
        sender = threading.Thread(target=lambda: outcome.append(ledger.send(busy, "[[slow 1.5]]")))
        sender.start()
        assert wait_until(lambda: ledger.runtime.registry.in_use(busy), 10)
        others = [ledger.create_session(study_id=f"s{n}").session_id for n in range(8)]
        live = ledger.runtime.live_sessions()
        # The busy session is never passivated, whatever its age: its run is in flight.
        assert len(live) == 3 and busy in live and others[-1] in live
        threads = [t for t in threading.enumerate() if t.name.startswith("SessionActor")]
        assert len(threads) <= 3 + 1  # one may still be stopping
        sender.join(30)
        assert outcome and outcome[0].ok
        # A passivated session comes back whole when used again.
        assert ledger.info(others[0]).study_id == "s0"  # type: ignore[union-attr]
        assert ledger.send(others[0], "back again").ok
        assert len(ledger.runtime.live_sessions()) <= 3


def test_turns_sent_to_many_sessions_under_a_tight_cap_all_complete(ledger_path: Path) -> None:
    with open_ledger(ledger_path, max_live_sessions=2, max_runs=3) as ledger:
        sessions = [ledger.create_session().session_id for _ in range(6)]
        outcomes: list[Any] = []
        lock = threading.Lock()

        def client(offset: int) -> None:
            for round_ in range(4):
                session_id = sessions[(offset + round_) % len(sessions)]
                try:
                    outcome: Any = ledger.send(session_id, f"client {offset} round {round_}")
                except Exception as error:  # reported by the assertion below
                    outcome = error
                with lock:
                    outcomes.append(outcome)

        clients = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        assert len(outcomes) == 24
        failed = [o if isinstance(o, Exception) else o.error
                  for o in outcomes if isinstance(o, Exception) or not o.ok]
        assert not failed
        assert sum(ledger.info(s).turn_count for s in sessions) == 24  # type: ignore[union-attr]
        assert ledger.verify().ok


def test_idle_sessions_are_passivated_and_old_ones_expire(ledger_path: Path) -> None:
    with open_ledger(ledger_path, idle_timeout=0.01, expiry_age=3600) as ledger:
        session_id = ledger.create_session().session_id
        swept: list[dict[str, int]] = []
        # idle for the shortest idle time the settings allow (10 ms): passivated soon after
        assert wait_until(lambda: swept.append(ledger.sweep()) or swept[-1]["passivated"] >= 1)
        assert all(result["expired"] == 0 for result in swept)
        assert session_id not in ledger.runtime.live_sessions()
        result = ledger.sweep(now=time.time() + 7200)
        assert result["expired"] == 1
        expired = ledger.events(session_id)[-1].event
        assert isinstance(expired, SessionExpired) and expired.idle_seconds >= 3600
        assert ledger.info(session_id).status == "expired"  # type: ignore[union-attr]
        with pytest.raises(InvalidCommandError, match="expired"):
            ledger.send(session_id, "late")
        resumed = ledger.resume_session(session_id)
        assert resumed.status == "idle"


def test_a_crashed_session_actor_is_restarted_from_the_log(ledger: Ledger) -> None:
    session_id = ledger.create_session().session_id
    ref = ledger.runtime.actor(session_id)
    ref.tell(object())  # an unknown message makes the actor fail
    assert wait_until(lambda: not ref.is_alive(), 5)
    assert ledger.send(session_id, "after the crash").ok
    assert ledger.runtime.actor(session_id) is not ref


def test_cancelling_a_running_turn_records_cancelled_and_kills_the_agent(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = f"cancel-{time.monotonic_ns()}"
    monkeypatch.setenv("CHATLEDGER_TEST_MARKER", marker)
    session_id = ledger.create_session().session_id
    updates: list[AnyTurnUpdate] = []
    done = threading.Event()

    def sink(item: AnyTurnUpdate) -> None:
        updates.append(item)
        if isinstance(item, TurnDone):
            done.set()

    ticket = ledger.runtime.send(session_id, "[[slow 30]]", sink)
    assert wait_until(lambda: standin_pids(marker), 10)
    pids = standin_pids(marker)
    assert ledger.runtime.cancel(session_id, ticket)
    assert done.wait(15)
    last = updates[-1]
    assert isinstance(last, TurnDone) and last.reason == "cancelled"
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 5)
    failed = ledger.events(session_id)[-1].event
    assert isinstance(failed, RunFailed) and failed.reason == "cancelled"


def test_closing_cancels_running_turns_and_records_them(
    ledger_path: Path,
) -> None:
    ledger = open_ledger(ledger_path)
    session_id = ledger.create_session().session_id
    done = threading.Event()
    ledger.runtime.send(session_id, "[[slow 30]]",
                        lambda item: done.set() if isinstance(item, TurnDone) else None)
    assert wait_until(
        lambda: isinstance(ledger.events(session_id)[-1].event, RunStarted), 10
    )
    before = set(pykka.ActorRegistry.get_all())
    started = time.monotonic()
    ledger.close()
    assert time.monotonic() - started < 20
    assert done.is_set()
    assert not any(ref.is_alive() for ref in before if ref in pykka.ActorRegistry.get_all())
    with open_ledger(ledger_path) as reopened:
        failed = reopened.events(session_id)[-1].event
        assert isinstance(failed, RunFailed) and failed.reason == "cancelled"


def test_another_writer_moving_the_session_on_is_absorbed(ledger: Ledger) -> None:
    from chatledger.events import StudyContextSet
    from chatledger.storage import open_store

    session_id = ledger.create_session().session_id
    ledger.runtime.actor(session_id)  # live, with version 1 in memory
    with open_store(ledger.config.path) as other:  # another handle, as another process would
        other.append(session_id, [StudyContextSet(study_id="from-elsewhere")], 1)
    info = ledger.switch_mode(session_id, "power")
    assert (info.mode, info.study_id, info.version) == ("power", "from-elsewhere", 3)


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from chatledger.actors.updates import TextDeltaUpdate
    from chatledger.ledger import Ledger
    path, session_id = sys.argv[1], sys.argv[2]
    ledger = Ledger(path, agent_command=(sys.executable, "-m", "chatledger.agent.standin"))
    streaming = threading.Event()

    def on_update(update):
        if isinstance(update, TextDeltaUpdate):
            streaming.set()

    threading.Thread(target=ledger.send, args=(session_id, "[[slow 60]]"),
                     kwargs={"on_update": on_update, "stream_deltas": True}, daemon=True).start()
    # The stand-in streams its first piece at once, then stays silent for 20 s.
    if streaming.wait(20):
        print("running", flush=True)
    threading.Event().wait(60)  # until killed
    """
)


def test_kill_9_of_the_process_hosting_a_run_then_reopen_closes_the_turn_interrupted(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = f"kill9-{time.monotonic_ns()}"
    monkeypatch.setenv("CHATLEDGER_TEST_MARKER", marker)
    with open_ledger(ledger_path) as ledger:
        session_id = ledger.create_session().session_id
    host = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(ledger_path), session_id],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert host.stdout is not None
        # The host heard the agent's first piece: the agent is in its 20 s of silence.
        assert host.stdout.readline().strip() == "running"
        assert standin_pids(marker)
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait(10)
    # A silent agent would run on until its next write; the orphan guard stops it now.
    try:
        assert wait_until(lambda: not standin_pids(marker), 8), "the orphaned agent runs on"
    finally:
        for pid in standin_pids(marker):
            os.kill(pid, signal.SIGKILL)
    with open_ledger(ledger_path) as ledger:
        ledger.runtime.actor(session_id)  # activation closes the open turn
        assert wait_until(
            lambda: isinstance(ledger.events(session_id)[-1].event, RunFailed), 5
        )
        failed = ledger.events(session_id)[-1].event
        assert isinstance(failed, RunFailed) and failed.reason == "interrupted"
        assert ledger.verify().ok
        assert ledger.send(session_id, "after the crash").ok


UNSTORABLE_AGENT = textwrap.dedent(
    r"""
    import json, sys
    sys.stdin.read()
    tool = {"type": "tool_use", "id": "toolu_1", "name": "Calc",
            "input": {"n": 10**30, "text": "x"}}
    print(json.dumps({"type": "assistant", "message": {"content": [tool]}}))
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "big " + str(10**30)}
    print(json.dumps({"type": "user", "message": {"content": [result]}}))
    print('{"type": "result", "subtype": "success", "is_error": false, '
          '"result": "answer with a lone \\udcff surrogate and ' + str(-(10**25)) + '", '
          '"session_id": "s-1", "usage": {"input_tokens": ' + str(10**22) + '}}')
    """
)


def test_an_answer_holding_values_msgpack_cannot_store_is_recorded_in_storable_form(
    ledger_path: Path, tmp_path: Path
) -> None:
    script = tmp_path / "unstorable_agent.py"
    script.write_text(UNSTORABLE_AGENT)
    with open_ledger(ledger_path, agent_command=(sys.executable, str(script))) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "compute")
        assert outcome.ok, outcome
        answer = ledger.events(session_id)[-1].event
        assert isinstance(answer, ResponseReceived)
        assert "\ufffd" in answer.text or "surrogate" in answer.text
        assert answer.tool_calls[0].input == {"n": str(10**30), "text": "x"}
        assert answer.usage == {"input_tokens": str(10**22)}
        assert ledger.verify().ok
