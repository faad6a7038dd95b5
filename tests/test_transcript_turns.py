"""chatledger's own turns keep claude's transcript (issue 20, items 1-2), offline with the
stand-in: the `transcript_mirror` setting puts `--session-mirror` on the argv, the stream
reader turns mirror lines into `TranscriptFrame` updates that never reach the caller, the run
job records them with their turn (those printed after the result line too), and before a
resumed turn on another HOME it writes the transcript file back and records
`TranscriptRestored`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from chatledger.actors.turn import mirrors_transcript
from chatledger.agent import StreamJsonParser, TranscriptFrame
from chatledger.agent.dialects import CLAUDE, DIALECTS, STANDIN
from chatledger.agent.dialects.claude import build_argv
from chatledger.agent.dialects.standin import StandinDialect
from chatledger.cli import main as cli
from chatledger.config import load_config
from chatledger.errors import ConfigError
from chatledger.events import (
    ResponseReceived,
    RunStarted,
    TranscriptEntriesAppended,
    TranscriptRestored,
)
from chatledger.ledger import Ledger
from chatledger.sdk_store import LedgerSessionStore, TranscriptKey
from chatledger.transcript import project_key_for_directory, transcript_file, transcript_sessions

STANDIN_COMMAND = (sys.executable, "-m", "chatledger.testing.standin")


# -- the setting and the argv -----------------------------------------------------------------


def test_the_mirror_flag_goes_on_the_argv_only_with_stream_json() -> None:
    argv = build_argv(("claude",), mode="user", allowed_tools=(), transcript_mirror=True)
    assert argv[-1] == "--session-mirror"
    assert "--session-mirror" not in build_argv(("claude",), mode="user", allowed_tools=())
    with pytest.raises(ValueError, match="stream-json"):
        build_argv(("claude",), mode="user", allowed_tools=(), output_format="text",
                   transcript_mirror=True)


@pytest.mark.parametrize(("choice", "strategy", "dialect", "output", "expected"), [
    ("auto", "prompt", CLAUDE, "stream-json", False),
    ("auto", "resume", CLAUDE, "stream-json", True),
    ("auto", "resume", STANDIN, "stream-json", False),
    ("on", "prompt", CLAUDE, "stream-json", True),
    ("on", "prompt", STANDIN, "stream-json", True),
    ("on", "resume", CLAUDE, "text", False),
    ("off", "resume", CLAUDE, "stream-json", False),
])
def test_the_mirror_runs_by_default_only_where_a_resume_needs_it(
    choice: str, strategy: str, dialect: Any, output: str, expected: bool
) -> None:
    config = load_config(config_file=None, environ={}, path="/tmp/x", transcript_mirror=choice,
                         history_strategy=strategy, output_format=output)
    assert mirrors_transcript(config, dialect) is expected


def test_an_unknown_mirror_choice_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="CHATLEDGER_TRANSCRIPT_MIRROR"):
        load_config(config_file=None, environ={"CHATLEDGER_TRANSCRIPT_MIRROR": "maybe"},
                    path="/tmp/x")


# -- the reader -------------------------------------------------------------------------------


def test_a_mirror_line_becomes_a_frame_and_never_answer_text() -> None:
    parser = StreamJsonParser()
    line = {"type": "transcript_mirror", "filePath": "/h/.claude/projects/-w/s.jsonl",
            "entries": [{"type": "assistant", "uuid": "a1",
                         "message": {"content": [{"type": "text", "text": "secret"}]}}]}
    updates = parser.feed_line(json.dumps(line).encode())
    assert updates == [TranscriptFrame(file_path=line["filePath"], entries=tuple(line["entries"]))]
    assert parser.feed_line(b'{"type":"transcript_mirror","filePath":"/x"}') == []
    finished = parser.finish()
    assert finished.text == "" and finished.unknown_lines == 0 and finished.garbage_lines == 0
    assert any("transcript_mirror" in note for note in finished.diagnostics)


# -- turns with the stand-in ------------------------------------------------------------------


def transcript_events(ledger: Ledger) -> list[TranscriptEntriesAppended]:
    """Every TranscriptEntriesAppended in the ledger, in log order."""
    return [record.event for record in ledger.log.read_all()
            if isinstance(record.event, TranscriptEntriesAppended)]


def test_a_mirrored_turn_keeps_its_frames_with_the_turn_and_streams_none(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    with Ledger(str(tmp_path / "ledger"), agent_command=STANDIN_COMMAND, transcript_mirror="on",
                agent_env={"HOME": str(home)}, agent_cwd=str(work), timeout=30,
                kill_grace=0.5) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "hello mirror", stream_deltas=True)
        assert outcome.ok, outcome.error
        kept = transcript_events(ledger)
        events = [r.event for r in ledger.events(session_id)]
        report = ledger.log.verify()
    [started] = [e for e in events if isinstance(e, RunStarted)]
    [answer] = [e for e in events if isinstance(e, ResponseReceived)]
    assert started.argv[-1] == "--session-mirror"
    assert outcome.text == "echo: hello mirror"
    streamed = [msgspec.json.encode(update).decode() for update in outcome.updates]
    assert kept and {(e.turn, e.turn_session_id) for e in kept} == {(1, session_id)}
    assert {e.agent_session_id for e in kept} == {answer.agent_session_id}
    assert {e.project_key for e in kept} == {project_key_for_directory(work)}
    entries = [entry for event in kept for entry in event.entries]
    assert [entry["type"] for entry in entries] == ["user", "assistant", "last-prompt"]
    assert "hello mirror" in entries[0]["message"]["content"]  # the prompt claude was given
    # The last-prompt frame came after the result line: the runner read on to EOF.
    assert not any("transcript_mirror" in u or "last-prompt" in u or "parentUuid" in u
                   for u in streamed)
    assert report.ok


class _FileResumingStandin(StandinDialect):
    """The stand-in, posing as an agent that resumes from its transcript file (as claude
    does), so the restore runs offline."""

    name = "standin-file"
    resumes_from_transcript_file = True


def test_a_resumed_turn_on_another_home_gets_its_transcript_from_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(DIALECTS, "standin-file", _FileResumingStandin())
    work = tmp_path / "work"
    work.mkdir()
    settings: dict[str, Any] = dict(
        agent_command=STANDIN_COMMAND, agent_dialect="standin-file", history_strategy="resume",
        agent_cwd=str(work), timeout=30, kill_grace=0.5)
    ledger_path = str(tmp_path / "ledger")
    with Ledger(ledger_path, agent_env={"HOME": str(tmp_path / "node-a")}, **settings) as node_a:
        session_id = node_a.create_session().session_id
        assert node_a.send(session_id, "turn one on node a").ok
        agent_session = node_a.info(session_id).agent_session_id
    with Ledger(ledger_path, agent_env={"HOME": str(tmp_path / "node-b")}, **settings) as node_b:
        assert node_b.send(session_id, "turn two on node b").ok
        events = [r.event for r in node_b.events(session_id)]
        store = LedgerSessionStore(node_b.log)
        key = TranscriptKey(project_key_for_directory(work), agent_session)
        turn_one = store.load_blocking(key._asdict())
        assert node_b.log.verify().ok
    kinds = [type(e).__name__ for e in events]
    assert kinds[-3:] == ["RunStarted", "TranscriptRestored", "ResponseReceived"], kinds
    started, restored = events[-3], events[-2]
    assert isinstance(started, RunStarted) and started.resume_agent_session_id == agent_session
    assert isinstance(restored, TranscriptRestored)
    assert (restored.turn, restored.agent_session_id, restored.reason) == (
        2, agent_session, "missing")
    assert restored.project_key == key.project_key
    written = transcript_file(tmp_path / "node-b" / ".claude" / "projects", key)
    on_disk = [json.loads(line) for line in written.read_text().splitlines()]
    assert turn_one is not None and on_disk == turn_one[:3]  # turn one, as node a mirrored it
    assert "turn one on node a" in on_disk[0]["message"]["content"]


def test_history_export_and_verify_cover_a_mirrored_session(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ledger_path = tmp_path / "ledger"
    with Ledger(str(ledger_path), agent_command=STANDIN_COMMAND, transcript_mirror="on",
                agent_env={"HOME": str(tmp_path / "home")}, agent_cwd=str(work), timeout=30,
                kill_grace=0.5) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "first words").ok
        [transcript_session] = transcript_sessions(ledger.log, session_id)
    runner = CliRunner()
    base = ["--ledger", str(ledger_path)]
    shown = runner.invoke(cli, [*base, "history", transcript_session])
    assert shown.exit_code == 0, shown.output
    assert "[turn 1] you" in shown.output and "first words" in shown.output
    assert "echo: first words" in shown.output
    export = tmp_path / "session.jsonl"
    exported = runner.invoke(cli, [*base, "export", session_id, "-o", str(export)])
    assert exported.exit_code == 0, exported.output
    header, *records = [json.loads(line) for line in export.read_text().splitlines()]
    assert {record["session_id"] for record in records} == {session_id, transcript_session}
    assert any(record["event"]["type"] == "transcript_entries_appended" for record in records)
    checked = runner.invoke(cli, ["verify", str(export)])
    assert checked.exit_code == 0 and "2 session(s)" in checked.output, checked.output
    verified = runner.invoke(cli, [*base, "verify"])
    assert verified.exit_code == 0, verified.output


def test_a_live_turns_upkeep_finds_places_and_starts_its_recorder_only_at_the_first_frame(
        tmp_path: Path) -> None:
    import threading

    from chatledger.actors.transcripts import Transcripts, TurnTranscript
    from chatledger.storage import open_store

    home = tmp_path / "claude"
    with open_store(str(tmp_path / "ledger")) as log:
        upkeep = TurnTranscript(Transcripts(LedgerSessionStore(log)), turn=1, session_id="s",
                                mirror=True, resume_agent_session_id="agent-1",
                                agent_env={"CLAUDE_CONFIG_DIR": str(home)},
                                agent_cwd=str(tmp_path))
        threads = threading.active_count()
        upkeep.begin(restore=False)  # a live process holds the conversation already
        # before the user line: no system call for the places, no recorder thread
        assert upkeep.project_key == "" and upkeep.recorder is None
        assert threading.active_count() == threads
        key = project_key_for_directory(tmp_path)
        frame = TranscriptFrame(file_path=str(home / "projects" / key / "agent-1.jsonl"),
                                entries=({"type": "user", "uuid": "u1"},))
        assert upkeep.take(frame)
        assert upkeep.project_key == key and upkeep.recorder is not None
        report = upkeep.finish()
        assert report is not None and report.finished and report.frames == 1
