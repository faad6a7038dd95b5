"""claude's own transcript in the ledger during chatledger's turns (issue 20, items 1-2): mirror
frames recognised and named, recorded off the reading thread with their turn, and the
transcript file written back from the ledger so `claude --resume` works on another HOME.
The last two tests run the real claude with `--session-mirror` against the fake API.
"""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from claude_harness import CLEARED_VARIABLES, ClaudeHarness, require_claude
from fake_anthropic import FakeAnthropic, text

from chatledger.events import TranscriptEntriesAppended, history
from chatledger.sdk_store import LedgerSessionStore, TranscriptKey, ledger_session_id
from chatledger.transcript import (
    CompleteFiles,
    MirrorFrame,
    TranscriptRecorder,
    key_for_transcript_file,
    mirror_frame,
    note_if_complete,
    project_key_for_directory,
    projects_dir,
    restore_transcript,
    transcript_file,
)

PROJECTS = Path("/home/me/.claude/projects")
SESSION = "0f8b6a52-3c1d-4a8e-9a43-2b6f0d1e7c55"


@pytest.fixture
def store(ledger_path: Path) -> Iterator[LedgerSessionStore]:
    """A session store over a fresh LMDB ledger, closed after the test."""
    with LedgerSessionStore.open(ledger_path) as opened:
        yield opened


def entry(uuid: str, text: str, kind: str = "user") -> dict[str, Any]:
    """A transcript entry shaped like claude's."""
    return {"type": kind, "uuid": uuid, "message": {"role": kind, "content": text}}


# -- frames and keys ---------------------------------------------------------------------------


def test_a_mirror_line_is_recognised_and_other_lines_are_not() -> None:
    line = {"type": "transcript_mirror", "filePath": "/x/y.jsonl", "entries": [{"type": "user"}]}
    assert mirror_frame(line) == MirrorFrame("/x/y.jsonl", [{"type": "user"}])
    for other in ({"type": "result"}, {"type": "transcript_mirror", "filePath": "/x"},
                  {"type": "transcript_mirror", "filePath": "", "entries": []}, [1], None):
        assert mirror_frame(other) is None


def test_transcript_paths_map_to_keys_and_back() -> None:
    main = PROJECTS / "-work-project" / f"{SESSION}.jsonl"
    sub = PROJECTS / "-work-project" / SESSION / "subagents" / "agent-1.jsonl"
    assert key_for_transcript_file(main, PROJECTS) == TranscriptKey("-work-project", SESSION)
    assert key_for_transcript_file(sub, PROJECTS) == TranscriptKey(
        "-work-project", SESSION, "subagents/agent-1")
    for key in (TranscriptKey("-work-project", SESSION),
                TranscriptKey("-work-project", SESSION, "subagents/agent-1")):
        assert key_for_transcript_file(transcript_file(PROJECTS, key), PROJECTS) == key


@pytest.mark.parametrize("path", [
    "/elsewhere/-p/s.jsonl", str(PROJECTS / "-p" / ".." / ".." / "s.jsonl"),
    str(PROJECTS / "s.jsonl"), str(PROJECTS / "-p" / "s" / "x.jsonl"), str(PROJECTS / "-p" / "s.txt"),
])
def test_a_path_outside_or_of_another_shape_has_no_key(path: str) -> None:
    assert key_for_transcript_file(path, PROJECTS) is None


def test_a_key_that_would_climb_out_names_no_file() -> None:
    for key in (TranscriptKey("..", SESSION), TranscriptKey("-p", "../../x"),
                TranscriptKey("-p", SESSION, "subagents/../../../x")):
        with pytest.raises(ValueError):
            transcript_file(PROJECTS, key)


def test_the_projects_dir_follows_claude_config_dir_then_home() -> None:
    assert projects_dir({"HOME": "/h"}) == Path("/h/.claude/projects")
    assert projects_dir({"HOME": "/h", "CLAUDE_CONFIG_DIR": "/c"}) == Path("/c/projects")


@pytest.mark.parametrize("name", ["project", "with space and ü", "x" * 250, "ü" * 120 + "-𝄞"])
def test_the_project_key_of_a_directory_is_the_one_claude_and_the_sdk_use(
    tmp_path: Path, name: str
) -> None:
    directory = tmp_path / name
    directory.mkdir()
    key = project_key_for_directory(directory)
    assert len(key) <= 200 + 8 and "/" not in key
    sdk = pytest.importorskip("claude_agent_sdk")
    if all(ord(char) < 0x10000 for char in str(directory)):
        # (past the BMP the SDK hashes code points, claude, in JavaScript, UTF-16 units)
        assert key == sdk.project_key_for_directory(directory)


# -- recording ---------------------------------------------------------------------------------


def test_recorded_frames_land_in_order_with_their_turn(store: LedgerSessionStore) -> None:
    path = str(PROJECTS / "-p" / f"{SESSION}.jsonl")
    recorder = TranscriptRecorder(store, PROJECTS, turn=3, turn_session_id="chat-1")
    recorder.feed(MirrorFrame(path, [entry("u1", "hello"), entry("a1", "hi", "assistant")]))
    recorder.feed(MirrorFrame(path, [entry("u1", "hello"), {"type": "last-prompt"}]))
    recorder.feed(MirrorFrame("/elsewhere/x.jsonl", [entry("z", "lost")]))
    report = recorder.close()
    assert report.finished and report.frames == 3 and report.frames_dropped == 1
    assert report.entries_recorded == 3 and report.agent_session_ids == {SESSION}
    key = TranscriptKey("-p", SESSION)
    assert store.load_blocking(key._asdict()) == [
        entry("u1", "hello"), entry("a1", "hi", "assistant"), {"type": "last-prompt"}]
    events = [r.event for r in store.store.read_session(ledger_session_id(key))]
    assert all(isinstance(e, TranscriptEntriesAppended) and e.turn == 3
               and e.turn_session_id == "chat-1" for e in events)
    # The transcript session's history is claude's view of the turn, tagged with it.
    shown = history(store.store.read_session(ledger_session_id(key)))
    assert [(m.role, m.content, m.turn) for m in shown] == [
        ("user", "hello", 3), ("assistant", "hi", 3)]


def test_feed_returns_while_the_ledger_commit_is_still_waiting(store: LedgerSessionStore) -> None:
    release = threading.Event()
    entered = threading.Event()
    original = store.store.append

    def slow_append(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(10)
        return original(*args, **kwargs)

    store.store.append = slow_append  # type: ignore[method-assign]
    recorder = TranscriptRecorder(store, PROJECTS, turn=1, turn_session_id="chat-1")
    path = str(PROJECTS / "-p" / f"{SESSION}.jsonl")
    recorder.feed(MirrorFrame(path, [entry("u1", "hello")]))
    assert entered.wait(10)  # the worker is inside the commit...
    recorder.feed(MirrorFrame(path, [entry("u2", "again")]))  # ...and feeding still returns
    release.set()
    assert recorder.close().entries_recorded == 2


# -- restoring ---------------------------------------------------------------------------------


def test_a_missing_transcript_is_written_from_the_ledger_privately(
    store: LedgerSessionStore, tmp_path: Path
) -> None:
    key = TranscriptKey("-p", SESSION)
    sub = TranscriptKey("-p", SESSION, "subagents/agent-1")
    store.append_blocking(key._asdict(), [entry("u1", "hello"), {"type": "last-prompt"}])
    store.append_blocking(sub._asdict(), [entry("s1", "sub work")])
    projects = tmp_path / "projects"
    restored = restore_transcript(store, projects, "-p", SESSION)
    assert restored is not None and restored.reason == "missing"
    assert restored.entry_count == 2 and restored.subagent_files == 1
    lines = [json.loads(line) for line in restored.path.read_text().splitlines()]
    assert lines == [entry("u1", "hello"), {"type": "last-prompt"}]
    assert stat.S_IMODE(restored.path.stat().st_mode) == 0o600
    assert transcript_file(projects, sub).exists()
    # Complete now: left alone.
    assert restore_transcript(store, projects, "-p", SESSION) is None


def test_a_transcript_that_lost_its_last_turn_is_rewritten(
    store: LedgerSessionStore, tmp_path: Path
) -> None:
    key = TranscriptKey("-p", SESSION)
    store.append_blocking(key._asdict(), [entry("u1", "one"), entry("u2", "two")])
    path = transcript_file(tmp_path, key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(entry("u1", "one")) + "\n")
    restored = restore_transcript(store, tmp_path, "-p", SESSION)
    assert restored is not None and restored.reason == "behind"
    assert [json.loads(line)["uuid"] for line in path.read_text().splitlines()] == ["u1", "u2"]


def test_nothing_is_written_when_the_ledger_has_no_transcript(
    store: LedgerSessionStore, tmp_path: Path
) -> None:
    projects = tmp_path / "projects"
    assert restore_transcript(store, projects, "-p", SESSION) is None
    assert not projects.exists()


# -- with the real claude ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude_binary() -> str:
    """The real claude binary (installed into the npm cache if need be), else a skip."""
    return require_claude(pytest.skip, pytest.fail)


def mirrored_run(harness: ClaudeHarness, recorder: TranscriptRecorder, prompt: str,
                 *args: str) -> list[dict[str, Any]]:
    """Run claude once with --session-mirror; feed its frames to `recorder`; its other lines."""
    finished = harness.run_bare(prompt, "--session-mirror", *args)
    assert finished.returncode == 0, finished.stderr[-2000:]
    lines = []
    for raw in finished.stdout.decode().splitlines():
        message = json.loads(raw)
        frame = mirror_frame(message)
        if frame is not None:
            recorder.feed(frame)
        else:
            lines.append(message)
    return lines


@pytest.mark.claude
@pytest.mark.timeout(120)
def test_a_mirrored_turn_is_resumed_on_another_home_from_the_ledger(
    claude_binary: str, store: LedgerSessionStore, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in CLEARED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with FakeAnthropic(lifetime=100) as fake:
        fake.script(text("Noted: pomegranate."), text("You said pomegranate."))
        node_a = ClaudeHarness(claude_binary, fake, tmp_path / "node-a")
        try:
            recorder = TranscriptRecorder(store, projects_dir(node_a.variables()), turn=1,
                                          turn_session_id="chat-1")
            lines = mirrored_run(node_a, recorder, "Remember the word pomegranate.")
            report = recorder.close()
            session_id = next(line["session_id"] for line in lines if line["type"] == "result")
            assert report.finished and not report.errors
            assert report.agent_session_ids == {session_id}
            [on_disk_file] = node_a.transcripts()
            on_disk = [json.loads(line) for line in on_disk_file.read_text().splitlines()]
            project_key = on_disk_file.parent.name
            assert project_key == project_key_for_directory(node_a.workdir)
            key = {"project_key": project_key, "session_id": session_id}
            # Including what claude mirrored after its result line (the last-prompt entry).
            assert store.load_blocking(key) == on_disk
        finally:
            node_a.kill_leftovers()

        node_b = ClaudeHarness(claude_binary, fake, tmp_path / "node-b")
        node_b.workdir = node_a.workdir  # the same project, another machine's HOME
        try:
            assert not node_b.transcripts()
            restored = restore_transcript(store, projects_dir(node_b.variables()), project_key,
                                          session_id)
            assert restored is not None and restored.reason == "missing"
            recorder = TranscriptRecorder(store, projects_dir(node_b.variables()), turn=2,
                                          turn_session_id="chat-1")
            lines = mirrored_run(node_b, recorder, "Which word did I ask you to remember?",
                                 f"--resume={session_id}")
            recorder.close()
            result = next(line for line in lines if line["type"] == "result")
            assert not result["is_error"] and result["result"] == "You said pomegranate."
            resumed = fake.model_calls()[-1].all_text()
            assert "Remember the word pomegranate." in resumed and "Noted: pomegranate." in resumed
            turns = {r.event.turn for r in store.store.read_session(ledger_session_id(key))
                     if isinstance(r.event, TranscriptEntriesAppended)}
            assert turns == {1, 2}
            assert store.store.verify().ok
        finally:
            node_b.kill_leftovers()


def test_a_file_found_complete_is_vouched_for_until_it_or_the_ledger_moves(
    store: LedgerSessionStore, tmp_path: Path
) -> None:
    key = TranscriptKey("-p", SESSION)
    store.append_blocking(key._asdict(), [entry("u1", "one")])
    complete = CompleteFiles()
    assert restore_transcript(store, tmp_path, "-p", SESSION, complete) is not None
    path = transcript_file(tmp_path, key)
    assert complete.vouch(path, store.extent_blocking(key._asdict()))
    assert restore_transcript(store, tmp_path, "-p", SESSION, complete) is None
    store.append_blocking(key._asdict(), [entry("u2", "two")])  # another node's turn
    assert not complete.vouch(path, store.extent_blocking(key._asdict()))
    restored = restore_transcript(store, tmp_path, "-p", SESSION, complete)
    assert restored is not None and restored.reason == "behind"
    with path.open("a") as handle:  # claude appends its next turn
        handle.write(json.dumps(entry("u3", "three")) + "\n")
    assert not complete.vouch(path, store.extent_blocking(key._asdict()))
    assert note_if_complete(store, tmp_path, "-p", SESSION, complete)
    assert complete.vouch(path, store.extent_blocking(key._asdict()))
