"""Forks with lineage: `fork(session, at_version)` on the Ledger, the SessionManager and the
CLI makes a session that starts with ForkedFrom and the parent's history up to that version;
`show` names the parent, `verify` checks the fork against it; with the resume strategy the
fork's first turn forks the agent's own session (`--fork-session`), and falls back to prompt
history when the parent's agent session holds later turns. Real LMDB ledgers, the stand-in
agent in real subprocesses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner, Result
from testkit import STANDIN_COMMAND_LINE, open_ledger

from chatledger.actors.turn import plan_turn
from chatledger.agent.dialects.claude import CLAUDE, build_argv
from chatledger.audit.attest import check_ledger
from chatledger.cli import main
from chatledger.config import Config, load_config
from chatledger.errors import InvalidCommandError, InvalidSessionIdError, UnknownSessionError
from chatledger.events import (
    AgentSessionLost,
    MessageSent,
    ResponseReceived,
    RunStarted,
    SessionCreated,
    SessionInfo,
    history,
)
from chatledger.events.model import ForkedFrom
from chatledger.events.projections import ForkLineage
from chatledger.manager import SessionManager
from chatledger.storage import EventLog, record_hash


def conversation_of(records: list[Any]) -> list[tuple[str, str]]:
    return [(message.role, message.content) for message in history(records)]


@pytest.fixture
def parent(ledger_path: Path) -> tuple[str, list[int]]:
    """A session with three answered turns; the versions at which each turn ended."""
    with open_ledger(ledger_path) as ledger:
        session_id = ledger.create_session(study_id="beam").session_id
        ends = []
        for number in (1, 2, 3):
            assert ledger.send(session_id, f"turn {number} [[echo]]").ok
            ends.append(ledger.info(session_id).version)  # type: ignore[union-attr]
    return session_id, ends


def test_a_fork_starts_with_forked_from_and_the_parent_history_up_to_its_version(
    ledger_path: Path, parent: tuple[str, list[int]],
) -> None:
    session_id, ends = parent
    with open_ledger(ledger_path) as ledger:
        fork = ledger.fork(session_id, ends[1], new_session_id="what-if")
        parent_records = ledger.events(session_id)
        fork_records = ledger.events("what-if")
        fork_history = ledger.history("what-if")
    first = fork_records[0].event
    assert isinstance(first, ForkedFrom)
    assert (first.parent_session_id, first.parent_version) == (session_id, ends[1])
    assert first.parent_position == parent_records[ends[1] - 1].position
    with EventLog(ledger_path) as log:
        stored = log.read_session_raw(session_id, from_version=ends[1])[0][1]
    assert first.parent_hash == record_hash(bytes(stored)[32:]).hex()
    assert isinstance(fork_records[1].event, SessionCreated)
    upto = parent_records[:ends[1]]
    assert [(m.role, m.content) for m in fork_history] == conversation_of(upto)
    assert [m.content for m in fork_history if m.role == "user"] == [
        "turn 1 [[echo]]", "turn 2 [[echo]]"]
    assert (fork.forked_from, fork.forked_at_version) == (session_id, ends[1])
    assert (fork.study_id, fork.turn_count, fork.message_count) == ("beam", 2, 4)
    assert fork.total_cost_usd == 0.0 and fork.agent_session_id is None  # the parent's spend
    answers = [r.event for r in fork_records if isinstance(r.event, ResponseReceived)]
    assert answers and all(a.cost_usd is None and a.usage is None for a in answers)


def test_a_fork_reads_the_same_after_a_reopen_and_its_parent_is_unchanged(
    ledger_path: Path, parent: tuple[str, list[int]],
) -> None:
    session_id, ends = parent
    with open_ledger(ledger_path) as ledger:
        before = ledger.events(session_id)
        fork_id = ledger.fork(session_id, ends[0]).session_id
        info = ledger.info(fork_id)
        records = ledger.events(fork_id)
    with open_ledger(ledger_path) as ledger:
        assert ledger.events(session_id) == before
        assert ledger.info(fork_id) == info
        assert ledger.events(fork_id) == records
        outcome = ledger.send(fork_id, "and now? [[echo]]")
        assert outcome.ok and outcome.turn == 2
        assert [m.content for m in ledger.history(fork_id) if m.role == "user"] == [
            "turn 1 [[echo]]", "and now? [[echo]]"]
        assert ledger.verify().ok


def test_the_fork_s_first_prompt_holds_the_parent_turns_up_to_its_version_only(
    ledger_path: Path, parent: tuple[str, list[int]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session_id, ends = parent
    record = tmp_path / "prompts"
    monkeypatch.setenv("CHATLEDGER_STANDIN_RECORD", str(record))
    with open_ledger(ledger_path) as ledger:
        fork_id = ledger.fork(session_id, ends[1]).session_id
        assert ledger.send(fork_id, "what came before? [[echo]]").ok
    [prompt] = [path.read_text() for path in record.iterdir()]
    assert "turn 1" in prompt and "turn 2" in prompt and "turn 3" not in prompt


def test_forking_refuses_unknown_sessions_bad_versions_bad_and_taken_ids(
    ledger_path: Path, parent: tuple[str, list[int]],
) -> None:
    session_id, ends = parent
    with open_ledger(ledger_path) as ledger:
        with pytest.raises(UnknownSessionError):
            ledger.fork("nobody", 1)
        for version in (0, -1, ends[2] + 1):
            with pytest.raises(InvalidCommandError, match="out of range"):
                ledger.fork(session_id, version)
        for bad in ("../escape", "a/b", "~checkpoints", "~mine"):
            with pytest.raises(InvalidSessionIdError):
                ledger.fork(session_id, 1, new_session_id=bad)
        ledger.fork(session_id, 1, new_session_id="taken")
        with pytest.raises(InvalidCommandError, match="already exists"):
            ledger.fork(session_id, 1, new_session_id="taken")
        with pytest.raises(InvalidCommandError, match="already exists"):
            ledger.fork(session_id, 1, new_session_id=session_id)
        assert {info.session_id for info in ledger.sessions()} == {session_id, "taken"}


def test_forking_inside_a_turn_is_refused_with_the_versions_around_it(
    ledger_path: Path, parent: tuple[str, list[int]],
) -> None:
    session_id, ends = parent
    with open_ledger(ledger_path) as ledger:
        assert ledger.passivate(session_id) or True
        ledger.log.append(session_id, [MessageSent(turn=4, text="cut"), RunStarted(turn=4)],
                          ends[2])
        for version in (ends[2] + 1, ends[2] + 2):
            with pytest.raises(InvalidCommandError, match=rf"inside turn 4: fork at version "
                               rf"{ends[2]} \(before the turn\)"):
                ledger.fork(session_id, version)
        with pytest.raises(InvalidCommandError, match=rf"fork at version {ends[0]} .*or at "
                           rf"version {ends[1]} \(after it\)"):
            ledger.fork(session_id, ends[0] + 2)  # inside turn 2, after its RunStarted
        assert ledger.fork(session_id, ends[2]).forked_at_version == ends[2]


def test_a_fork_of_a_fork_names_its_own_parent_and_copies_no_second_forked_from(
    ledger_path: Path, parent: tuple[str, list[int]],
) -> None:
    session_id, ends = parent
    with open_ledger(ledger_path) as ledger:
        child = ledger.fork(session_id, ends[1], new_session_id="child")
        grandchild = ledger.fork("child", child.version, new_session_id="grandchild")
        events = [record.event for record in ledger.events("grandchild")]
        assert ledger.verify().ok
    assert (grandchild.forked_from, grandchild.forked_at_version) == ("child", child.version)
    assert sum(isinstance(event, ForkedFrom) for event in events) == 1
    assert grandchild.message_count == child.message_count == 4


def test_verify_reports_a_fork_whose_parent_record_changed(
    ledger_path: Path, parent: tuple[str, list[int]],
) -> None:
    session_id, ends = parent
    with open_ledger(ledger_path) as ledger:
        ledger.fork(session_id, ends[0], new_session_id="fork")
    with EventLog(ledger_path) as log:
        value = bytes(log.read_session_raw(session_id, from_version=ends[0])[0][1])
        config = load_config(path=str(ledger_path))
        assert check_ledger(log, config, session_ids=["fork"]).ok
    data_file = ledger_path / "data.mdb"
    content = bytearray(data_file.read_bytes())
    start = content.find(value)
    while start >= 0:  # every copy (LMDB keeps stale free pages)
        content[start + len(value) - 3] ^= 0x01
        start = content.find(value, start + 1)
    data_file.write_bytes(bytes(content))
    with EventLog(ledger_path) as log:
        only_fork = check_ledger(log, config, session_ids=["fork"])
        whole = check_ledger(log, config)
    assert not only_fork.ok and "the parent's history changed after the fork" in (
        only_fork.reason or "")
    assert any("fork fork was made from version" in problem for problem in whole.problems)


def test_verify_reports_a_forged_fork_whose_copies_are_not_the_parent_s(
    ledger_path: Path, parent: tuple[str, list[int]],
) -> None:
    session_id, ends = parent
    with open_ledger(ledger_path) as ledger:
        real = ledger.events(session_id)
        genuine = ledger.events(ledger.fork(session_id, ends[0]).session_id)[0].event
        forged = [genuine, SessionCreated(study_id="beam"),
                  MessageSent(turn=1, text="words never said")]
        ledger.log.append("forged", forged, 0)
        config = ledger.config
        check = check_ledger(ledger.log, config, session_ids=["forged"])
    assert real and not check.ok
    assert "differs from the parent" in (check.reason or "")


def test_the_session_manager_forks_and_refuses_an_unknown_parent(
    ledger_path: Path, parent: tuple[str, list[int]],
) -> None:
    session_id, ends = parent

    async def scenario() -> Any:
        manager = SessionManager(path=str(ledger_path), agent_command=STANDIN_COMMAND_LINE)
        try:
            fork = await manager.fork(session_id, ends[0], new_session_id="async-fork")
            with pytest.raises(ValueError, match="not found"):
                await manager.fork("nobody", 1)
            return fork, manager.get_session_info("async-fork")
        finally:
            await manager.stop()

    fork, info = asyncio.run(scenario())
    assert fork.forked_from == session_id and info["message_count"] == 2


# -- the agent side: --fork-session with the resume strategy ----------------------------------


def _resume_ledger(ledger_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CHATLEDGER_STANDIN_SESSIONS", str(tmp_path / "agent-sessions"))
    return open_ledger(ledger_path, history_strategy="resume")


def test_a_fork_at_the_parent_s_last_turn_forks_the_agent_session(
    ledger_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _resume_ledger(ledger_path, tmp_path, monkeypatch) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "my number is 42").ok
        assert ledger.send(session_id, "my colour is teal").ok
        parent_agent = ledger.info(session_id).agent_session_id  # type: ignore[union-attr]
        fork = ledger.fork(session_id, ledger.info(session_id).version)  # type: ignore[union-attr]
        first = ledger.events(fork.session_id)[0].event
        assert isinstance(first, ForkedFrom) and first.agent_session_id == parent_agent
        outcome = ledger.send(fork.session_id, "[[prompt]] what do you remember?")
        assert outcome.ok, outcome.error
        assert ledger.send(fork.session_id, "[[prompt]] and again?").ok
        runs = [r.event for r in ledger.events(fork.session_id)
                if isinstance(r.event, RunStarted)]
        own = ledger.info(fork.session_id).agent_session_id  # type: ignore[union-attr]
        assert ledger.info(session_id).agent_session_id == parent_agent  # type: ignore[union-attr]
    fork_runs = runs[-2:]
    assert fork_runs[0].history_strategy == "fork"
    assert f"--resume={parent_agent}" in fork_runs[0].argv
    assert "--fork-session" in fork_runs[0].argv
    assert own is not None and own != parent_agent  # the agent named a new session
    assert fork_runs[1].history_strategy == "resume" and f"--resume={own}" in fork_runs[1].argv
    assert "--fork-session" not in fork_runs[1].argv
    assert "my number is 42" in outcome.text and "my colour is teal" in outcome.text


def test_a_fork_before_the_parent_s_last_turn_sends_prompt_history_and_says_why(
    ledger_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _resume_ledger(ledger_path, tmp_path, monkeypatch) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "my number is 42").ok
        early = ledger.info(session_id).version  # type: ignore[union-attr]
        assert ledger.send(session_id, "my colour is teal").ok
        fork = ledger.fork(session_id, early)
        first = ledger.events(fork.session_id)[0].event
        outcome = ledger.send(fork.session_id, "[[prompt]] what do you remember?")
        runs = [r.event for r in ledger.events(fork.session_id)
                if isinstance(r.event, RunStarted)]
    assert isinstance(first, ForkedFrom) and first.agent_session_id is None
    assert "holds later turns" in first.agent_note and "prompt history" in first.agent_note
    assert outcome.ok and runs[-1].history_strategy == "prompt"
    assert "--fork-session" not in runs[-1].argv
    assert "my number is 42" in outcome.text and "teal" not in outcome.text


def test_a_parent_that_went_on_after_the_fork_was_made_makes_its_first_turn_use_prompts(
    ledger_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _resume_ledger(ledger_path, tmp_path, monkeypatch) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "my number is 42").ok
        fork = ledger.fork(session_id, ledger.info(session_id).version)  # type: ignore[union-attr]
        assert ledger.send(session_id, "my colour is teal").ok  # the parent goes on
        outcome = ledger.send(fork.session_id, "[[prompt]] what do you remember?")
        events = [r.event for r in ledger.events(fork.session_id)]
    lost = [event for event in events if isinstance(event, AgentSessionLost)]
    assert len(lost) == 1 and "holds later turns" in lost[0].message
    runs = [event for event in events if isinstance(event, RunStarted)]
    assert runs[-1].history_strategy == "prompt" and "--fork-session" not in runs[-1].argv
    assert outcome.ok and "my number is 42" in outcome.text and "teal" not in outcome.text


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def run(ledger_path: Path) -> Any:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, ["--ledger", str(ledger_path), *args],
                             env={"CHATLEDGER_AGENT_COMMAND": STANDIN_COMMAND_LINE,
                                  "CHATLEDGER_TIMEOUT": "60"})

    return invoke


def test_the_fork_command_prints_the_new_id_and_show_names_the_parent(
    run: Any, parent: tuple[str, list[int]],
) -> None:
    session_id, ends = parent
    made = run("fork", session_id[:8], "--at", str(ends[0]), "--as", "cli-fork")
    assert made.exit_code == 0, made.output
    assert made.stdout.strip() == "cli-fork"
    shown = run("show", "cli-fork")
    assert shown.exit_code == 0
    assert f"{session_id} at version {ends[0]}" in shown.stdout and "forked from" in shown.stdout
    info = json.loads(run("show", "cli-fork", "--json").stdout)
    assert info["fork"]["parent_session_id"] == session_id
    assert info["fork"]["parent_version"] == ends[0]
    as_json = json.loads(run("fork", session_id, "--at", str(ends[1]), "--json").stdout)
    assert as_json["fork"]["parent_session_id"] == session_id and "--fork-session" in as_json["agent_note"]
    assert run("verify", "cli-fork").exit_code == 0
    assert run("verify").exit_code == 0
    history_lines = run("history", "cli-fork").stdout
    assert "turn 1 [[echo]]" in history_lines and "turn 2" not in history_lines


def test_the_fork_command_s_exit_codes(run: Any, parent: tuple[str, list[int]]) -> None:
    session_id, ends = parent
    assert run("fork", "nobody", "--at", "1").exit_code == 3
    assert run("fork", session_id, "--at", "0").exit_code == 2
    assert run("fork", session_id, "--at", str(ends[2] + 1)).exit_code == 2
    assert run("fork", session_id, "--at", "1", "--as", "../x").exit_code == 2
    assert run("fork", session_id, "--at", "1", "--as", "~checkpoints").exit_code == 2
    assert run("fork", session_id, "--at", "1", "--as", "taken").exit_code == 0
    taken = run("fork", session_id, "--at", "1", "--as", "taken")
    assert taken.exit_code == 2 and "already exists" in taken.output
    assert run("fork", session_id).exit_code == 2  # --at is required


def test_a_fork_imported_without_its_parent_verifies_with_a_note(
    run: Any, parent: tuple[str, list[int]], tmp_path: Path,
) -> None:
    session_id, ends = parent
    assert run("fork", session_id, "--at", str(ends[0]), "--as", "alone").exit_code == 0
    exported = tmp_path / "alone.jsonl"
    assert run("export", "alone", "-o", str(exported)).exit_code == 0
    other = tmp_path / "other"
    runner = CliRunner()
    imported = runner.invoke(main, ["--ledger", str(other), "import", str(exported)])
    assert imported.exit_code == 0, imported.output
    checked = runner.invoke(main, ["--ledger", str(other), "verify"])
    assert checked.exit_code == 0, checked.output
    assert f"names session {session_id}, which this ledger does not hold" in checked.stderr


def test_a_warm_fork_spawns_its_live_agent_forking_the_parent_s_session(
    ledger_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATLEDGER_STANDIN_SESSIONS", str(tmp_path / "agent-sessions"))
    with open_ledger(ledger_path, warm_agents=True, max_warm_agents=4,
                     kill_grace=2.0) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "my number is 42").ok
        parent_agent = ledger.info(session_id).agent_session_id  # type: ignore[union-attr]
        fork = ledger.fork(session_id, ledger.info(session_id).version)  # type: ignore[union-attr]
        outcome = ledger.send(fork.session_id, "[[prompt]] what do you remember?")
        runs = [r.event for r in ledger.events(fork.session_id)
                if isinstance(r.event, RunStarted) and r.version > fork.version]
        own = ledger.info(fork.session_id).agent_session_id  # type: ignore[union-attr]
    assert outcome.ok, outcome.error
    assert runs[0].history_strategy == "live"
    assert f"--resume={parent_agent}" in runs[0].argv and "--fork-session" in runs[0].argv
    assert own not in (None, parent_agent)
    assert "my number is 42" in outcome.text


# -- the pure parts ---------------------------------------------------------------------------


def test_the_planner_forks_the_agent_session_only_for_a_fork_without_one_of_its_own() -> None:
    def started(info: SessionInfo, strategy: str) -> RunStarted:
        plan = plan_turn(info=info, recent=[], text="hi", canvas_state=None,
                         config=Config(agent_command=("claude",), history_strategy=strategy),
                         dialect=CLAUDE, mcp_config_path=None, attempt=1, resume=None,
                         host="box", pid=1)
        return plan.events[-1]  # type: ignore[return-value]

    fork = SessionInfo(session_id="f", version=3, fork=ForkLineage(
        parent_session_id="p", parent_version=2, agent_session_id="parent-agent"))
    first = started(fork, "resume")
    assert first.history_strategy == "fork" and first.resume_agent_session_id == "parent-agent"
    assert first.argv[-2:] == ("--resume=parent-agent", "--fork-session")
    own = msgspec.structs.replace(fork, agent_session_id="own-agent")
    later = started(own, "resume")
    assert later.history_strategy == "resume" and "--fork-session" not in later.argv
    assert started(fork, "prompt").history_strategy == "prompt"


def test_fork_session_needs_a_session_to_resume() -> None:
    with pytest.raises(ValueError, match="fork_session needs a session to resume"):
        build_argv(("claude",), mode="user", allowed_tools=(), fork_session=True)


def test_redacting_a_parent_or_a_fork_keeps_the_lineage_verifiable(
    ledger_path: Path, parent: tuple[str, list[int]],
) -> None:
    """Personal data redacted in the parent after the fork (or in the fork's copy) is not a
    forged copy: verify stays clean and counts the redactions."""
    session_id, ends = parent
    with open_ledger(ledger_path) as ledger:
        fork_id = ledger.fork(session_id, ends[1]).session_id
        first_message = next(r.version for r in ledger.events(session_id)
                             if isinstance(r.event, MessageSent))
        ledger.redact(session_id, first_message, reason="personal data")
        copied = next(r.version for r in ledger.events(fork_id)
                      if isinstance(r.event, MessageSent) and "turn 2" in r.event.text)
        ledger.redact(fork_id, copied, reason="personal data")
        check = check_ledger(ledger.log, ledger.config)
    assert check.ok, check.reason
    assert check.records_redacted == 2
