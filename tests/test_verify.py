"""Tamper evidence: a flipped byte anywhere in a record, a damaged index or a truncated log
is reported by `verify` with its position; a clean ledger verifies."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import msgspec
import pytest

from chatledger.events import MessageSent, ResponseReceived, SessionCreated
from chatledger.storage import EventLog, Head
from chatledger.storage.lmdb import verify as verification
from chatledger.storage.lmdb.layout import encode_index_entry, position_key, stream_key
from chatledger.storage.lmdb.verify import verify_log
from chatledger.storage.verification import VerifyReport


def fill(path: Path, sessions: int = 3, turns: int = 6) -> list[tuple[int, bytes]]:
    with EventLog(path) as log:
        for index in range(sessions):
            log.append(f"s{index}", [SessionCreated(study_id=f"study-{index}")], 0)
        for turn in range(1, turns + 1):
            for index in range(sessions):
                version = log.version(f"s{index}")
                log.append(
                    f"s{index}",
                    [MessageSent(turn=turn, text=f"question {turn} of {index}"),
                     ResponseReceived(turn=turn, text=f"answer {turn}", cost_usd=0.01)],
                    version,
                )
        assert log.verify().ok
        return list(log.read_raw())


def flip_byte(path: Path, value: bytes, offset: int) -> None:
    """Flip one bit of the record in the file (in every copy: LMDB keeps stale free pages)."""
    data_file = path / "data.mdb"
    content = bytearray(data_file.read_bytes())
    start = content.find(value)
    assert start >= 0
    while start >= 0:
        content[start + offset] ^= 0x01
        start = content.find(value, start + 1)
    data_file.write_bytes(bytes(content))


def test_a_clean_ledger_verifies(ledger_path: Path) -> None:
    values = fill(ledger_path)
    with EventLog(ledger_path) as log:
        report = log.verify()
        assert report.ok and report.reason is None
        assert report.records_checked == len(values)
        assert report.sessions_checked == 3
        assert report.head == log.head()


def test_one_flipped_byte_in_any_record_is_reported_at_its_position(
    ledger_path: Path,
) -> None:
    values = fill(ledger_path)
    rng = random.Random(7)
    original = (ledger_path / "data.mdb").read_bytes()
    for position, value in values:
        for offset in {0, 31, 32, len(value) - 1, rng.randrange(len(value))}:
            flip_byte(ledger_path, value, offset)
            with EventLog(ledger_path) as log:
                report = log.verify()
            assert not report.ok, (position, offset)
            assert report.first_bad_position == position, (position, offset, report.problems)
            (ledger_path / "data.mdb").write_bytes(original)
    with EventLog(ledger_path) as log:
        assert log.verify().ok


def test_a_damaged_session_index_is_reported(ledger_path: Path) -> None:
    fill(ledger_path)
    with EventLog(ledger_path) as log:
        store = log.store
        entry = log.index_entry("s1")
        assert entry is not None
        forged = msgspec.structs.replace(
            entry, info=msgspec.structs.replace(entry.info, mode="power")
        )
        log.run_in_writer(
            lambda txn: txn.put(b"s1", encode_index_entry(forged), db=store.sessions_db)
        )
        report = log.verify()
        assert not report.ok
        assert "s1" in (report.reason or "")
        log.rebuild_index()
        assert log.verify().ok


def test_a_damaged_stream_index_is_reported(ledger_path: Path) -> None:
    fill(ledger_path)
    with EventLog(ledger_path) as log:
        store = log.store
        log.run_in_writer(
            lambda txn: txn.put(stream_key("s0", 2), position_key(5), db=store.streams_db)
        )
        report = log.verify()
        assert not report.ok and "stream index" in (report.reason or "")


def test_a_truncated_log_fails_against_a_saved_head(ledger_path: Path) -> None:
    fill(ledger_path)
    with EventLog(ledger_path) as log:
        saved = Head.parse(str(log.head()))
        last = saved.position
        store = log.store

        def truncate(txn: object) -> None:
            # An editor who knows the format drops the last three records and fixes up the
            # head and indexes so that the remaining log is self-consistent.
            raw = dict(log.read_raw())
            for position in range(last - 2, last + 1):
                txn.delete(position_key(position), db=store.log_db)  # type: ignore[attr-defined]
            from chatledger.events import decode_record
            from chatledger.storage.lmdb.layout import META_HEAD, encode_head

            for position in range(last - 2, last + 1):
                recorded = decode_record(raw[position][32:])
                txn.delete(  # type: ignore[attr-defined]
                    stream_key(recorded.session_id, recorded.version), db=store.streams_db
                )
            txn.put(  # type: ignore[attr-defined]
                META_HEAD, encode_head(last - 3, raw[last - 3][:32]), db=store.meta_db
            )

        log.run_in_writer(truncate)
        log.rebuild_index()
        assert log.verify().ok  # self-consistent on its own...
        report = log.verify(saved_head=saved)  # ...but not against the head kept earlier
        assert not report.ok
        assert "truncated" in (report.reason or "")


def test_a_saved_head_that_does_not_match_is_reported(ledger_path: Path) -> None:
    fill(ledger_path)
    with EventLog(ledger_path) as log:
        head = log.head()
        assert log.verify(saved_head=head).ok
        forged = Head(head.position - 1, head.hash)
        report = log.verify(saved_head=forged)
        assert not report.ok and report.first_bad_position == head.position - 1


def test_head_text_round_trips_and_bad_text_is_refused() -> None:
    head = Head(12, bytes(range(32)))
    assert Head.parse(str(head)) == head
    for bad in ("", "12", "x:00", "12:abcd"):
        try:
            Head.parse(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


# -- the two-process verify (a helper hashes and reads the stream index) -------------------


def verify_both_ways(log: EventLog, saved_head: Head | None = None) -> VerifyReport:
    """Verify with the helper and without it; the reports must be identical."""
    parallel = verify_log(log.store, saved_head, parallel=True)
    sequential = verify_log(log.store, saved_head, parallel=False)
    assert parallel == sequential
    return parallel


def test_the_helper_path_verifies_a_clean_ledger_on_its_own(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = fill(ledger_path)
    with EventLog(ledger_path) as log:
        sequential_report = verify_log(log.store, parallel=False)

    def no_fallback(*args: object) -> VerifyReport:
        raise AssertionError("the helper path fell back to the sequential check")

    monkeypatch.setattr(verification, "verify_snapshot", no_fallback)
    advanced: list[int] = []
    with EventLog(ledger_path) as log:
        report = verify_log(log.store, log.head(), progress=advanced.append, parallel=True)
    assert report == sequential_report
    assert report.ok and report.records_checked == len(values) == sum(advanced)


def test_flipped_bytes_give_the_same_report_with_and_without_the_helper(
    ledger_path: Path,
) -> None:
    values = fill(ledger_path)
    original = (ledger_path / "data.mdb").read_bytes()
    for position, value in (values[0], values[len(values) // 2], values[-1]):
        for offset in (0, 32, len(value) - 1):
            flip_byte(ledger_path, value, offset)
            with EventLog(ledger_path) as log:
                report = verify_both_ways(log)
            assert not report.ok and report.first_bad_position == position
            (ledger_path / "data.mdb").write_bytes(original)


def test_damaged_indexes_give_the_same_report_with_and_without_the_helper(
    ledger_path: Path,
) -> None:
    fill(ledger_path)
    with EventLog(ledger_path) as log:
        store = log.store
        clean = verify_both_ways(log, log.head())
        assert clean.ok
        forged_head = Head(log.head().position - 1, log.head().hash)
        assert not verify_both_ways(log, forged_head).ok
        entry = log.index_entry("s1")
        forged = msgspec.structs.replace(
            entry, info=msgspec.structs.replace(entry.info, mode="power")
        )
        log.run_in_writer(
            lambda txn: txn.put(b"s1", encode_index_entry(forged), db=store.sessions_db)
        )
        assert not verify_both_ways(log).ok
        log.rebuild_index()
        log.run_in_writer(
            lambda txn: txn.put(stream_key("s0", 2), position_key(5), db=store.streams_db)
        )
        assert not verify_both_ways(log).ok
        log.run_in_writer(
            lambda txn: txn.put(stream_key("s0", 99), position_key(5), db=store.streams_db)
        )
        assert not verify_both_ways(log).ok


def test_a_helper_that_cannot_start_leaves_the_sequential_check(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(ledger_path)
    monkeypatch.setattr(verification, "_start_helper", lambda path, start, until: None)
    with EventLog(ledger_path) as log:
        assert verify_both_ways(log).ok


def test_the_helper_path_verifies_the_old_schema_fixture_ledger_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "ledger-v1"
    shutil.copytree(Path(__file__).parent / "fixtures" / "ledger-v1", copy)
    with EventLog(copy) as log:
        sequential = verify_log(log.store, parallel=False)
        assert sequential.ok

        def no_fallback(*args: object) -> VerifyReport:
            raise AssertionError("the helper path fell back to the sequential check")

        monkeypatch.setattr(verification, "verify_snapshot", no_fallback)
        assert verify_log(log.store, parallel=True) == sequential
