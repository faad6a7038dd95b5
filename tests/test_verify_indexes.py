"""The bulk index checks of `verify`: the stream and session indexes are compared whole
(`stream_index_matches`, `index_matches`) and only walked entry by entry when they differ.
Every damage the walk reports is still reported, in the same words, and an index the walk
accepts (an entry stored in other bytes of the same value) is still accepted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from chatledger.events import MessageSent, SessionCreated
from chatledger.storage import EventLog, open_store
from chatledger.storage.lmdb import verify as lmdb_verify
from chatledger.storage.lmdb.layout import (
    encode_index_entry,
    position_key,
    session_key,
    stream_key,
)
from chatledger.storage.memory import MemoryStore, _Snapshot
from chatledger.storage.verification import VerifyReport

Damage = Callable[[Any, Any], None]
"""Edits an LMDB ledger's indexes in a write transaction: (store, txn)."""


def fill(log: Any, sessions: int = 4, events: int = 5) -> None:
    for index in range(sessions):
        log.append(f"s{index}", [SessionCreated(study_id=f"study-{index}")], 0)
    for turn in range(1, events):
        for index in range(sessions):
            log.append(f"s{index}", [MessageSent(turn=turn, text=f"q {turn}")], turn)


def _index_value(store: Any, txn: Any, session_id: str) -> bytes:
    value = txn.get(session_key(session_id), db=store.sessions_db)
    assert value is not None
    return bytes(value)


def _swap_positions(store: Any, txn: Any) -> None:
    first = txn.get(stream_key("s0", 2), db=store.streams_db)
    second = txn.get(stream_key("s1", 2), db=store.streams_db)
    txn.put(stream_key("s0", 2), second, db=store.streams_db)
    txn.put(stream_key("s1", 2), first, db=store.streams_db)


def _move_version(store: Any, txn: Any) -> None:
    value = txn.get(stream_key("s2", 3), db=store.streams_db)
    txn.delete(stream_key("s2", 3), db=store.streams_db)
    txn.put(stream_key("s2", 9), value, db=store.streams_db)


def _shorten_key(store: Any, txn: Any) -> None:
    value = txn.get(stream_key("s0", 5), db=store.streams_db)
    txn.delete(stream_key("s0", 5), db=store.streams_db)
    txn.put(b"s0\x00" + bytes(7), value, db=store.streams_db)


def _forge_entry(store: Any, txn: Any) -> None:
    entry = msgspec.msgpack.decode(_index_value(store, txn, "s1"),
                                   type=lmdb_verify.IndexEntry)
    forged = msgspec.structs.replace(entry, info=msgspec.structs.replace(entry.info,
                                                                         message_count=99))
    txn.put(session_key("s1"), encode_index_entry(forged), db=store.sessions_db)


def _drop_entry(store: Any, txn: Any) -> None:
    txn.delete(session_key("s3"), db=store.sessions_db)


def _list_stranger(store: Any, txn: Any) -> None:
    txn.put(session_key("s9"), _index_value(store, txn, "s0"), db=store.sessions_db)


TAMPERS: dict[str, Damage] = {
    "a position changed": lambda store, txn: txn.put(stream_key("s0", 2), position_key(6),
                                                     db=store.streams_db),
    "two positions swapped": _swap_positions,
    "a version moved": _move_version,
    "an extra version indexed": lambda store, txn: txn.put(
        stream_key("s3", 6), position_key(4), db=store.streams_db),
    "a version unindexed": lambda store, txn: txn.delete(stream_key("s1", 5),
                                                         db=store.streams_db),
    "a key shortened": _shorten_key,
    "a session entry forged": _forge_entry,
    "a session entry dropped": _drop_entry,
    "a stranger listed": _list_stranger,
}


@pytest.fixture
def walk_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Calling it turns the bulk checks off: every verify walks both indexes entry by entry."""

    def disable() -> None:
        for snapshot in (lmdb_verify.LmdbSnapshot, _Snapshot):
            monkeypatch.setattr(snapshot, "stream_index_matches", lambda self, positions: False)
            monkeypatch.setattr(snapshot, "index_matches", lambda self, entries: False)

    yield disable


def _verify_sequentially(log: EventLog) -> VerifyReport:
    return lmdb_verify.verify_log(log.store, parallel=False)


@pytest.mark.parametrize("damage", TAMPERS.values(), ids=list(TAMPERS))
def test_index_damage_is_reported_as_the_entry_by_entry_walk_reports_it(
    ledger_path: Path, damage: Damage, walk_only: Callable[[], None]
) -> None:
    with EventLog(ledger_path) as log:
        fill(log)
        assert _verify_sequentially(log).ok
        log.run_in_writer(lambda txn: damage(log.store, txn))
        bulk = _verify_sequentially(log)
        walk_only()
        walked = _verify_sequentially(log)
    assert not bulk.ok
    assert bulk == walked


def test_a_clean_ledger_passes_the_bulk_checks_without_the_walk(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_walk(self: object) -> None:
        raise AssertionError("the bulk check should have decided")

    with EventLog(ledger_path) as log:
        fill(log)
        monkeypatch.setattr(lmdb_verify.LmdbSnapshot, "stream_index", no_walk)
        monkeypatch.setattr(lmdb_verify.LmdbSnapshot, "index_entries", no_walk)
        report = _verify_sequentially(log)
    assert report.ok and report.records_checked == 20 and report.sessions_checked == 4


def test_index_values_stored_in_other_bytes_of_the_same_value_still_verify(
    ledger_path: Path,
) -> None:
    with EventLog(ledger_path) as log:
        fill(log)
        store = log.store

        def reencode(txn: Any) -> None:
            position = txn.get(stream_key("s1", 3), db=store.streams_db)
            txn.put(stream_key("s1", 3), b"\x00" + bytes(position), db=store.streams_db)
            fields = msgspec.msgpack.decode(_index_value(store, txn, "s2"))
            reordered = dict(reversed(list(fields.items())))  # a map in another key order
            assert msgspec.msgpack.encode(reordered) != _index_value(store, txn, "s2")
            txn.put(session_key("s2"), msgspec.msgpack.encode(reordered), db=store.sessions_db)

        log.run_in_writer(reencode)
        report = _verify_sequentially(log)
    assert report.ok, report.problems


@pytest.mark.parametrize("damage", ["position", "extra", "entry"])
def test_memory_store_index_damage_is_reported_as_the_walk_reports_it(
    damage: str, walk_only: Callable[[], None]
) -> None:
    store = open_store("memory:")
    assert isinstance(store, MemoryStore)
    fill(store)
    data = store.data
    if damage == "position":
        data.streams["s0"][1] = 6
    elif damage == "extra":
        data.streams["s9"] = [3]
    else:
        entry = data.index["s1"]
        data.index["s1"] = msgspec.structs.replace(
            entry, info=msgspec.structs.replace(entry.info, message_count=99))
    bulk = store.verify()
    walk_only()
    walked = store.verify()
    assert not bulk.ok
    assert bulk == walked
    store.close()
