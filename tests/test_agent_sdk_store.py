"""The Claude Agent SDK session store over a real LMDB ledger: the SDK's own conformance suite
(all 14 contracts, nothing skipped), then what chatledger adds: durability across reopen,
idempotence by uuid, several writers on one ledger, a verifiable deletion, key mapping, and
the CLI's views (sessions, history, verify, export) of what the SDK wrote.

Skipped only when the `sdk` extra is not installed, and never under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

if os.environ.get("CI") != "true":
    pytest.importorskip("claude_agent_sdk", reason="the `sdk` extra is not installed")

from claude_agent_sdk import InMemorySessionStore
from claude_agent_sdk.testing import run_session_store_conformance

from chatledger.cli import main as cli
from chatledger.events import TranscriptDeleted, TranscriptEntriesAppended, history
from chatledger.sdk_store import LedgerSessionStore, ledger_session_id
from chatledger.sdk_store.keys import is_main_id, is_subkey_id, main_session_id
from chatledger.storage import EventLog, validate_session_id

KEY = {"project_key": "-work-project", "session_id": "0f8b6a52-3c1d-4a8e-9a43-2b6f0d1e7c55"}


@pytest.fixture
def store(ledger_path: Path) -> Iterator[LedgerSessionStore]:
    """A session store over a fresh LMDB ledger, closed after the test."""
    with LedgerSessionStore.open(ledger_path) as opened:
        yield opened


def run(coroutine: Any) -> Any:
    """Run one coroutine to completion on a fresh event loop."""
    return asyncio.run(coroutine)


def user(uuid: str, text: str, **extra: Any) -> dict[str, Any]:
    """A transcript entry of a user prompt, shaped like claude's."""
    return {"type": "user", "uuid": uuid, "timestamp": "2026-12-01T09:00:00.000Z",
            "message": {"role": "user", "content": text}, **extra}


def assistant(uuid: str, text: str, message_id: str = "msg_1") -> dict[str, Any]:
    """A transcript entry of one answer block, shaped like claude's."""
    return {"type": "assistant", "uuid": uuid, "timestamp": "2026-12-01T09:00:01.000Z",
            "message": {"id": message_id, "role": "assistant",
                        "content": [{"type": "text", "text": text}]}}


# -- the SDK's contract --------------------------------------------------------------------------


def test_the_sdk_conformance_suite_passes_with_nothing_skipped(tmp_path: Path) -> None:
    opened: list[LedgerSessionStore] = []

    def make_store() -> LedgerSessionStore:
        made = LedgerSessionStore.open(tmp_path / f"ledger-{len(opened)}")
        opened.append(made)
        return made

    try:
        run(run_session_store_conformance(make_store))
    finally:
        for made in opened:
            made.close()
    # The probe, then one fresh store per contract: a skipped contract would ask for none.
    assert len(opened) == 1 + 14


def test_the_store_offers_all_six_protocol_methods_as_coroutines() -> None:
    for name in ("append", "load", "list_sessions", "list_session_summaries", "delete",
                 "list_subkeys"):
        assert asyncio.iscoroutinefunction(getattr(LedgerSessionStore, name)), name


# -- what a ledger adds ------------------------------------------------------------------------


def test_appended_entries_survive_closing_and_reopening_the_ledger(ledger_path: Path) -> None:
    with LedgerSessionStore.open(ledger_path) as first:
        run(first.append(KEY, [user("u1", "hello"), assistant("a1", "hi")]))
    with LedgerSessionStore.open(ledger_path) as second:
        assert run(second.load(KEY)) == [user("u1", "hello"), assistant("a1", "hi")]


def test_an_entry_appended_twice_by_uuid_is_kept_once(store: LedgerSessionStore) -> None:
    run(store.append(KEY, [user("u1", "hello"), {"type": "last-prompt", "n": 1}]))
    # A retried batch overlapping the first one, and a repeat inside one batch.
    run(store.append(KEY, [user("u1", "hello"), assistant("a1", "hi"), assistant("a1", "hi"),
                           {"type": "last-prompt", "n": 1}]))
    assert run(store.load(KEY)) == [
        user("u1", "hello"), {"type": "last-prompt", "n": 1},
        assistant("a1", "hi"), {"type": "last-prompt", "n": 1},
    ]


def test_a_batch_of_only_known_uuids_writes_no_event(store: LedgerSessionStore) -> None:
    run(store.append(KEY, [user("u1", "hello")]))
    run(store.append(KEY, [user("u1", "hello")]))
    records = store.store.read_session(ledger_session_id(KEY))
    assert [type(recorded.event) for recorded in records] == [TranscriptEntriesAppended]


def test_two_stores_on_one_ledger_keep_every_entry_once(ledger_path: Path) -> None:
    """Two handles (two processes' worth of caches) append to one key in turns: each one's
    stale expected version makes it re-read the other's entries, and a uuid the other
    already kept is not written again."""
    log = EventLog(ledger_path)
    first, second = LedgerSessionStore(log), LedgerSessionStore(log)
    try:
        run(first.append(KEY, [user("u1", "one")]))
        run(second.append(KEY, [user("u1", "one"), user("u2", "two")]))
        run(first.append(KEY, [user("u2", "two"), user("u3", "three")]))
        assert [entry["uuid"] for entry in run(first.load(KEY))] == ["u1", "u2", "u3"]
    finally:
        log.close()


def test_concurrent_appends_from_many_tasks_lose_nothing(store: LedgerSessionStore) -> None:
    async def session(number: int) -> None:
        key = {"project_key": "p", "session_id": f"s{number}"}
        for batch in range(5):
            await store.append(key, [user(f"{number}-{batch}", f"turn {batch}")])

    async def all_sessions() -> None:
        await asyncio.gather(*(session(number) for number in range(20)))

    run(all_sessions())
    for number in range(20):
        loaded = run(store.load({"project_key": "p", "session_id": f"s{number}"}))
        assert [entry["uuid"] for entry in loaded] == [f"{number}-{batch}" for batch in range(5)]


def test_append_does_not_block_the_event_loop(store: LedgerSessionStore) -> None:
    """While an append waits for its commit, the loop keeps running other tasks: the commit
    happens on a worker thread, never on the loop's."""
    loop_threads: set[int] = set()
    append_threads: set[int] = set()
    original = store.store.append

    def recording_append(*args: Any, **kwargs: Any) -> Any:
        append_threads.add(threading.get_ident())
        return original(*args, **kwargs)

    store.store.append = recording_append  # type: ignore[method-assign]

    async def scenario() -> None:
        loop_threads.add(threading.get_ident())
        await store.append(KEY, [user("u1", "hello")])

    run(scenario())
    assert append_threads and not append_threads & loop_threads


def test_delete_keeps_the_entries_and_the_ledger_verifiable(
    store: LedgerSessionStore, ledger_path: Path
) -> None:
    sub = {**KEY, "subpath": "subagents/agent-1"}
    run(store.append(KEY, [user("u1", "secret plan")]))
    run(store.append(sub, [user("s1", "sub work")]))
    run(store.delete(KEY))
    assert run(store.load(KEY)) is None and run(store.load(sub)) is None
    main_events = [recorded.event for recorded in store.store.read_session(ledger_session_id(KEY))]
    assert [type(event) for event in main_events] == [TranscriptEntriesAppended, TranscriptDeleted]
    sub_events = [recorded.event for recorded in store.store.read_session(ledger_session_id(sub))]
    assert isinstance(sub_events[-1], TranscriptDeleted)
    assert sub_events[-1].subpath == "subagents/agent-1"
    assert store.store.verify().ok
    # Deleting again records nothing more; appending again starts a new transcript.
    run(store.delete(KEY))
    assert len(store.store.read_session(ledger_session_id(KEY))) == 2
    run(store.append(KEY, [user("u1", "again")]))
    assert run(store.load(KEY)) == [user("u1", "again")]


def test_a_session_expired_by_the_sweep_still_loads_lists_and_appends(
    store: LedgerSessionStore,
) -> None:
    """The supervisor's expiry sweep appends SessionExpired to idle sessions, SDK ones too:
    the store reads past it and its next append follows it."""
    from chatledger.events import SessionExpired

    run(store.append(KEY, [user("u1", "hello")]))
    ledger_id = ledger_session_id(KEY)
    store.store.append(ledger_id, [SessionExpired(reason="idle", idle_seconds=90000)], 1)
    assert [entry["session_id"] for entry in run(store.list_sessions(KEY["project_key"]))] == [
        KEY["session_id"]]
    summaries = run(store.list_session_summaries(KEY["project_key"]))
    assert summaries[0]["data"]["first_prompt"] == "hello"
    run(store.append(KEY, [user("u2", "again")]))
    assert [entry["uuid"] for entry in run(store.load(KEY))] == ["u1", "u2"]
    assert store.store.info(ledger_id).status == "idle"  # type: ignore[union-attr]


def test_a_summary_left_unchanged_by_a_batch_is_not_stored_again(
    store: LedgerSessionStore,
) -> None:
    run(store.append(KEY, [user("u1", "the first prompt")]))
    for number in range(40):  # answer blocks: the summary stays as it was
        run(store.append(KEY, [assistant(f"a{number}", "more", message_id="msg_9")]))
    events = [r.event for r in store.store.read_session(ledger_session_id(KEY))]
    assert events[0].summary is not None
    assert all(event.summary is None for event in events[1:])
    [summary] = run(store.list_session_summaries(KEY["project_key"]))
    assert summary["data"]["first_prompt"] == "the first prompt"
    run(store.append(KEY, [{"type": "custom-title", "customTitle": "renamed"}]))
    [summary] = run(store.list_session_summaries(KEY["project_key"]))
    assert summary["data"]["custom_title"] == "renamed"
    # A fresh store (another process) folds on from the last summary kept.
    fresh = LedgerSessionStore(store.store)
    run(fresh.append(KEY, [{"type": "x", "gitBranch": "feature"}]))
    [summary] = run(fresh.list_session_summaries(KEY["project_key"]))
    assert summary["data"]["custom_title"] == "renamed" and summary["data"]["git_branch"] == "feature"


def test_entries_with_an_integer_msgpack_cannot_hold_are_still_kept(
    store: LedgerSessionStore,
) -> None:
    run(store.append(KEY, [{"type": "x", "uuid": "big", "n": 2**70}]))
    assert run(store.load(KEY)) == [{"type": "x", "uuid": "big", "n": str(2**70)}]


def test_a_malformed_key_is_refused_with_a_reason(store: LedgerSessionStore) -> None:
    for key in ({"project_key": "", "session_id": "s"}, {"project_key": "p"},
                {"project_key": "p", "session_id": "s", "subpath": ""}):
        with pytest.raises(ValueError, match="SessionKey"):
            run(store.append(key, [{"type": "x"}]))


def test_the_sdk_in_memory_store_and_ours_agree_on_one_scenario(store: LedgerSessionStore) -> None:
    reference = InMemorySessionStore()
    sub = {**KEY, "subpath": "subagents/agent-7"}

    async def scenario(target: Any) -> list[Any]:
        await target.append(KEY, [user("u1", "first prompt"), assistant("a1", "answer")])
        await target.append(sub, [user("s1", "sub")])
        await target.append(KEY, [{"type": "summary", "summary": "a talk"}])
        listed = [entry["session_id"] for entry in await target.list_sessions(KEY["project_key"])]
        summaries = await target.list_session_summaries(KEY["project_key"])
        return [await target.load(KEY), await target.load(sub), listed,
                [summary["data"] for summary in summaries],
                await target.list_subkeys(KEY)]

    assert run(scenario(store)) == run(scenario(reference))


def test_the_sdk_store_benchmark_reports_every_figure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its tiniest run, so it does not rot; speed is never asserted here."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    from benchmarks.sdk_store import main as benchmark

    figures = benchmark(["--tiny"])
    assert set(figures["cadence"]) == {"chatledger (LMDB)", "SDK InMemorySessionStore"}
    assert len(figures["load"]) == 6 and all(v["count"] == 2 for v in figures["load"].values())
    assert "p99 ms" in capsys.readouterr().out


# -- the key mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    {"project_key": "-home-me-project", "session_id": "0f8b6a52-3c1d-4a8e-9a43-2b6f0d1e7c55"},
    {"project_key": "x" * 260, "session_id": "y" * 300, "subpath": "subagents/" + "z" * 300},
    {"project_key": "../../etc", "session_id": "../passwd", "subpath": "a/../../b"},
    {"project_key": "p\x00q", "session_id": "s\nt\u202e", "subpath": "\\\\server\\share"},
    {"project_key": "p", "session_id": "."},
])
def test_every_key_maps_to_a_valid_ledger_session_id(key: dict[str, str]) -> None:
    ledger_id = ledger_session_id(key)
    assert validate_session_id(ledger_id) == ledger_id
    assert ledger_id == ledger_session_id(dict(key))  # deterministic


def test_distinct_keys_map_to_distinct_ids_and_the_parts_split_cleanly() -> None:
    keys = [
        {"project_key": "a", "session_id": "s"},
        {"project_key": "b", "session_id": "s"},
        {"project_key": "a", "session_id": "s-x"},
        {"project_key": "a", "session_id": "s", "subpath": "subagents/agent-1"},
        {"project_key": "a", "session_id": "s", "subpath": "subagents/agent-2"},
        {"project_key": "a", "session_id": "s_x"},
    ]
    ids = [ledger_session_id(key) for key in keys]
    assert len(set(ids)) == len(ids)
    main = main_session_id("a", "s")
    assert ids[0] == main and is_main_id(main, "a") and not is_main_id(main, "b")
    assert is_subkey_id(ids[3], main) and not is_main_id(ids[3], "a")
    assert not is_subkey_id(ids[2], main)


def test_a_uuid_session_id_stays_readable_in_the_ledger_id() -> None:
    assert ledger_session_id(KEY).endswith("_" + KEY["session_id"])
    assert ledger_session_id(KEY).startswith("sdk_")


# -- chatledger's views of what the SDK wrote --------------------------------------------------


def test_history_shows_the_transcript_as_a_conversation(store: LedgerSessionStore) -> None:
    tool_use = {"type": "assistant", "uuid": "a2", "message": {
        "id": "msg_1", "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"p": 1}}]}}
    tool_result = {"type": "user", "uuid": "u2", "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "file text"}]}}
    run(store.append(KEY, [
        {"type": "queue-operation", "operation": "enqueue"},
        user("u1", "read it"), assistant("a1", "reading"), tool_use, tool_result,
        assistant("a3", "done", message_id="msg_2"),
    ]))
    messages = history(store.store.read_session(ledger_session_id(KEY)))
    assert [(message.role, message.content) for message in messages] == [
        ("user", "read it"), ("assistant", "reading"), ("tool", "file text"),
        ("assistant", "done"),
    ]
    assert [call.name for call in messages[1].tool_calls] == ["Read"]
    info = store.store.info(ledger_session_id(KEY))
    assert info is not None and info.status == "idle" and info.agent_session_id == KEY["session_id"]


def test_history_drops_a_deleted_transcript(store: LedgerSessionStore) -> None:
    run(store.append(KEY, [user("u1", "gone")]))
    run(store.delete(KEY))
    run(store.append(KEY, [user("u2", "kept")]))
    messages = history(store.store.read_session(ledger_session_id(KEY)))
    assert [message.content for message in messages] == ["kept"]


def test_the_cli_lists_shows_verifies_and_exports_what_the_sdk_wrote(ledger_path: Path) -> None:
    with LedgerSessionStore.open(ledger_path) as store:
        run(store.append(KEY, [user("u1", "hello ledger"), assistant("a1", "hello you")]))
        run(store.delete({**KEY, "session_id": "never-written"}))
    ledger_id = ledger_session_id(KEY)
    runner = CliRunner()
    base = ["--ledger", str(ledger_path)]

    listed = runner.invoke(cli, [*base, "sessions", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [info["session_id"] for info in json.loads(listed.output)] == [ledger_id]

    shown = runner.invoke(cli, [*base, "history", ledger_id])
    assert shown.exit_code == 0, shown.output
    assert "hello ledger" in shown.output and "hello you" in shown.output

    verified = runner.invoke(cli, [*base, "verify"])
    assert verified.exit_code == 0, verified.output

    exported = runner.invoke(cli, [*base, "export", ledger_id])
    assert exported.exit_code == 0, exported.output
    header, *lines = [json.loads(line) for line in exported.output.splitlines() if line.strip()]
    assert header["chatledger_export"] == 1 and header["scope"] == "sessions"
    assert lines[0]["event"]["type"] == "transcript_entries_appended"
    assert lines[0]["event"]["entries"][0]["uuid"] == "u1"

    html = runner.invoke(cli, [*base, "export", ledger_id, "--format", "html"])
    assert html.exit_code == 0 and "hello ledger" in html.output
