"""The LMDB event log: atomic appends, optimistic concurrency, group commit, reads,
subscriptions, map growth, reopening, and clear errors for bad ids and bad directories."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from testkit import wait_until

from chatledger.errors import (
    ConcurrencyError,
    CorruptLedgerError,
    InvalidSessionIdError,
    LedgerClosedError,
    LedgerError,
    LedgerFullError,
)
from chatledger.events import MessageSent, Recorded, SessionCreated
from chatledger.storage import EventLog, SessionAppend


def created(log: EventLog, session_id: str = "s") -> list[Recorded]:
    return log.append(session_id, [SessionCreated(mode="user")], expected_version=0)


def test_append_returns_records_and_read_session_returns_them(log: EventLog) -> None:
    written = log.append(
        "s", [SessionCreated(), MessageSent(turn=1, text="hi")], expected_version=0
    )
    assert [r.version for r in written] == [1, 2]
    assert [r.position for r in written] == [1, 2]
    assert log.read_session("s") == written
    assert log.read_session("s", from_version=2) == written[1:]
    assert list(log.read_all()) == written
    assert list(log.read_all(from_position=2)) == written[1:]
    assert log.head().position == 2
    assert log.version("s") == 2


def test_stale_expected_version_writes_nothing(log: EventLog) -> None:
    created(log)
    head = log.head()
    with pytest.raises(ConcurrencyError) as raised:
        log.append("s", [MessageSent(turn=1, text="a"), MessageSent(turn=2, text="b")], 0)
    assert (raised.value.expected, raised.value.actual) == (0, 1)
    assert log.head() == head
    assert len(log.read_session("s")) == 1
    assert log.verify().ok


def test_ahead_of_time_expected_version_is_refused(log: EventLog) -> None:
    with pytest.raises(ConcurrencyError):
        log.append("new", [SessionCreated()], expected_version=3)
    assert log.info("new") is None


@pytest.mark.parametrize(
    "session_id",
    ["", "x" * 129, "../etc", "a/b", "a\\b", "nul\x00byte", "tab\there", "..", ".",
     "bad\udcff", "del\x7f"],
)
def test_bad_session_ids_get_a_clear_value_error(log: EventLog, session_id: str) -> None:
    with pytest.raises(InvalidSessionIdError) as raised:
        log.append(session_id, [SessionCreated()], expected_version=0)
    assert isinstance(raised.value, ValueError)
    assert "session id" in str(raised.value)
    with pytest.raises(InvalidSessionIdError):
        log.read_session(session_id)
    assert log.head().position == 0


def test_unicode_session_ids_are_fine(log: EventLog) -> None:
    created(log, "étude-42 ✓")
    assert log.info("étude-42 ✓") is not None


def test_concurrent_appends_from_eight_threads_are_all_present_and_contiguous(
    log: EventLog,
) -> None:
    per_thread = 500
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            session_id = f"thread-{index}"
            created(log, session_id)
            for turn in range(1, per_thread):
                log.append(session_id, [MessageSent(turn=turn, text=str(turn))], turn)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    positions = [r.position for r in log.read_all()]
    assert positions == list(range(1, 8 * per_thread + 1))
    for index in range(8):
        versions = [r.version for r in log.read_session(f"thread-{index}")]
        assert versions == list(range(1, per_thread + 1))
    assert log.store.writer is not None
    # Group commit: fewer transactions than appends.
    assert log.store.writer.batches_committed < 8 * per_thread
    assert log.verify().ok


def test_each_caller_in_a_batch_gets_its_own_error(log: EventLog) -> None:
    created(log, "a")
    barrier = threading.Barrier(10)
    outcomes: list[object] = []
    lock = threading.Lock()

    def contender() -> None:
        barrier.wait(5)
        try:
            result: object = log.append("a", [MessageSent(turn=1, text="x")], 1)
        except ConcurrencyError as error:
            result = error
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=contender) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [o for o in outcomes if isinstance(o, list)]
    assert len(winners) == 1 and len(outcomes) == 10
    assert log.version("a") == 2


def test_an_atomic_append_to_several_sessions_writes_all_or_nothing(log: EventLog) -> None:
    created(log, "a")
    stale = [
        SessionAppend("new", [SessionCreated()], 0),
        SessionAppend("a", [MessageSent(turn=1, text="x")], 0),  # "a" is at version 1
    ]
    with pytest.raises(ConcurrencyError):
        log.append_atomically(stale)
    assert log.info("new") is None and log.head().position == 1
    moment = datetime(2020, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    written = log.append_atomically([
        SessionAppend("new", [SessionCreated(), MessageSent(turn=1, text="y")], 0,
                      recorded_at=[moment, moment]),
        SessionAppend("a", [MessageSent(turn=1, text="x")], 1),
    ])
    assert [len(records) for records in written] == [2, 1]
    assert [r.recorded_at for r in log.read_session("new")] == [moment, moment]
    assert log.version("a") == 2 and log.verify().ok


def test_one_session_twice_in_an_atomic_append_is_refused(log: EventLog) -> None:
    with pytest.raises(ValueError, match="names a session twice"):
        log.append_atomically([SessionAppend("s", [SessionCreated()], 0),
                               SessionAppend("s", [MessageSent(turn=1, text="x")], 1)])
    assert log.head().position == 0


def test_appends_batched_around_a_maintenance_job_stay_consistent(log: EventLog) -> None:
    created(log, "a")
    entered, release = threading.Event(), threading.Event()

    def hold(txn: Any) -> None:
        entered.set()
        release.wait(10)

    holding = threading.Thread(target=log.run_in_writer, args=(hold,))
    holding.start()
    assert entered.wait(10)  # the writer is now inside the holding job; the next ones queue up
    queued = [
        threading.Thread(target=log.append, args=("b", [SessionCreated()], 0)),
        threading.Thread(target=log.run_in_writer, args=(lambda txn: None,)),
        threading.Thread(target=log.append, args=("c", [SessionCreated()], 0)),
    ]
    writer = log.store.writer
    assert writer is not None
    for count, thread in enumerate(queued, start=1):
        thread.start()
        # keep the queue in this order: append, job, append
        assert wait_until(lambda count=count: writer.queued() >= count, 10)
    release.set()
    for thread in [holding, *queued]:
        thread.join(30)
    assert {info.session_id for info in log.sessions()} == {"a", "b", "c"}
    report = log.verify()
    assert report.ok, report.problems


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from chatledger.errors import ConcurrencyError
    from chatledger.events import MessageSent
    from chatledger.storage import EventLog
    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    wins = 0
    with EventLog(path) as log:
        while wins < count:
            version = log.version("shared")
            try:
                log.append("shared", [MessageSent(turn=version, text=name)], version)
                wins += 1
            except ConcurrencyError:
                pass
    print(wins)
    """
)


def test_two_processes_appending_to_one_session_have_one_winner_per_version(
    ledger_path: Path,
) -> None:
    with EventLog(ledger_path) as log:
        created(log, "shared")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(ledger_path), name, "150"],
            stdout=subprocess.PIPE, text=True,
        )
        for name in ("one", "two")
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [int(output) for output in outputs] == [150, 150]
    with EventLog(ledger_path) as log:
        records = log.read_session("shared")
        assert [r.version for r in records] == list(range(1, 302))
        texts = [r.event.text for r in records[1:]]  # type: ignore[union-attr]
        assert texts.count("one") == 150 and texts.count("two") == 150
        assert log.verify().ok


def test_the_map_grows_past_its_initial_size(ledger_path: Path) -> None:
    with EventLog(ledger_path, map_size=64 * 1024) as log:
        created(log)
        big = "x" * 20_000
        for turn in range(1, 101):
            log.append("s", [MessageSent(turn=turn, text=big)], turn)
        assert log.map_size() > 64 * 1024
        assert len(log.read_session("s")) == 101
        assert log.verify().ok


def test_a_full_map_with_growth_capped_raises_and_loses_nothing(ledger_path: Path) -> None:
    with EventLog(ledger_path, map_size=64 * 1024, max_map_size=128 * 1024) as log:
        created(log)
        version = 1
        with pytest.raises(LedgerFullError):
            while version < 1000:
                log.append("s", [MessageSent(turn=version, text="y" * 4000)], version)
                version += 1
        assert log.version("s") == version
        assert log.verify().ok


def test_reopen_returns_identical_data(ledger_path: Path) -> None:
    with EventLog(ledger_path) as log:
        created(log)
        log.append("s", [MessageSent(turn=1, text="persisted", canvas_state={"a": [1]})], 1)
        before = list(log.read_all())
        head = log.head()
        infos = log.sessions()
    with EventLog(ledger_path) as log:
        assert list(log.read_all()) == before
        assert log.head() == head
        assert log.sessions() == infos


def test_opening_a_ledger_twice_in_one_process_shares_it(ledger_path: Path) -> None:
    first = EventLog(ledger_path)
    second = EventLog(ledger_path)
    assert first.store is second.store
    created(first)
    assert second.version("s") == 1
    first.close()
    assert second.version("s") == 1
    second.close()
    with pytest.raises(LedgerClosedError):
        second.head()


def test_subscription_catches_up_then_follows_live_appends(log: EventLog) -> None:
    created(log, "a")
    subscription = log.subscribe(from_position=1)
    assert subscription.get(timeout=2).position == 1  # type: ignore[union-attr]
    assert subscription.get(timeout=0.1) is None
    received: list[Recorded] = []
    done = threading.Event()

    def follow() -> None:
        for recorded in subscription:
            received.append(recorded)
            if len(received) == 3:
                done.set()

    thread = threading.Thread(target=follow)
    thread.start()
    for turn in range(1, 4):
        log.append("a", [MessageSent(turn=turn, text="live")], turn)
    assert done.wait(5)
    subscription.close()
    thread.join(5)
    assert not thread.is_alive()
    assert [r.position for r in received] == [2, 3, 4]


def test_subscription_sees_appends_from_another_process(ledger_path: Path) -> None:
    with EventLog(ledger_path) as log:
        subscription = log.subscribe()
        subprocess.run(
            [sys.executable, "-c", WRITER_SCRIPT.replace('"shared"', '"other"'),
             str(ledger_path), "child", "0"],
            check=True, timeout=60,
        )
        child = subprocess.run(
            [sys.executable, "-c",
             "import sys\nfrom chatledger.storage import EventLog\n"
             "from chatledger.events import SessionCreated\n"
             "with EventLog(sys.argv[1]) as log: log.append('x', [SessionCreated()], 0)",
             str(ledger_path)],
            timeout=60,
        )
        assert child.returncode == 0
        recorded = subscription.get(timeout=5)
        assert recorded is not None and recorded.session_id == "x"
        subscription.close()


def test_a_directory_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LedgerError, match="not a chatledger ledger"):
        EventLog(tmp_path)


def test_a_file_instead_of_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(LedgerError, match="is a file"):
        EventLog(path)


def test_garbage_data_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"this is not lmdb" * 1000)
    with pytest.raises(CorruptLedgerError):
        EventLog(path)


def test_truncated_data_file_is_reported_not_crashed_on(ledger_path: Path) -> None:
    with EventLog(ledger_path) as log:
        created(log)
        for turn in range(1, 200):
            log.append("s", [MessageSent(turn=turn, text="z" * 500)], turn)
    data = ledger_path / "data.mdb"
    size = data.stat().st_size
    with data.open("r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(CorruptLedgerError):
        EventLog(ledger_path)


def test_an_lmdb_file_of_another_program_is_refused(tmp_path: Path) -> None:
    import lmdb

    path = tmp_path / "other"
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(b"key", b"value")
    env.close()
    with pytest.raises(LedgerError):
        EventLog(path)


def test_a_newer_storage_format_is_refused(ledger_path: Path) -> None:
    import msgspec

    with EventLog(ledger_path) as log:
        store = log.store

        def bump(txn: object) -> None:
            txn.put(  # type: ignore[attr-defined]
                b"format",
                msgspec.msgpack.encode({"marker": b"chatledger-lmdb", "version": 99}),
                db=store.meta_db,
            )

        log.run_in_writer(bump)
    with pytest.raises(LedgerError, match="newer chatledger"):
        EventLog(ledger_path)


def test_readonly_open_reads_and_refuses_writes(ledger_path: Path) -> None:
    with EventLog(ledger_path) as log:
        created(log)
    with EventLog(ledger_path, readonly=True) as reader:
        assert reader.version("s") == 1
        with pytest.raises(LedgerError, match="read-only"):
            reader.append("s", [MessageSent(turn=1, text="x")], 1)


def test_rebuild_index_recomputes_the_same_index(log: EventLog) -> None:
    created(log, "a")
    created(log, "b")
    log.append("a", [MessageSent(turn=1, text="hi")], 1)
    before = [log.index_entry(session_id) for session_id in ("a", "b")]
    assert log.rebuild_index() == 2
    assert [log.index_entry(session_id) for session_id in ("a", "b")] == before
