"""Every store the contract tests run against, as a small factory table, and damage hooks.

`STORE_LOCATIONS` maps a store's name to a function giving a fresh location for it (the
test's pytest request in, so an entry can ask for the fixtures it needs, such as `tmp_path`
or `postgres_url`; a location for `open_store` out): a new store joins the contract suite,
and the actor and manager tests, by adding one entry here. The damage hooks (`flip_byte`,
`truncate`, `forge_index_entry`) know how each store keeps its records, as an attacker
editing its files (or its tables) would: they are for tests only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from chatledger.storage import AuditStore, IndexEntry, MemoryStore
from chatledger.storage.factory import store_kind
from chatledger.storage.hashing import HASH_SIZE

StoreLocation = Callable[[pytest.FixtureRequest], str]
"""A test's request -> a fresh location of one store."""

STORE_LOCATIONS: dict[str, StoreLocation] = {
    "memory": lambda request: f"memory:test-{uuid.uuid4().hex}",
    "lmdb": lambda request: str(request.getfixturevalue("tmp_path") / "ledger"),
    "postgresql": lambda request: str(request.getfixturevalue("postgres_url")),
}
"""Store name -> a fresh location for it (the postgresql one skips without PostgreSQL)."""


def _sql(store: AuditStore, statement: str, params: list[Any] | dict[str, Any]) -> None:
    """Run one statement on the PostgreSQL store's database, on a connection of its own."""
    import psycopg

    with psycopg.connect(store.url, autocommit=True) as connection:  # type: ignore[attr-defined]
        connection.execute(statement, params)


def _flipped(value: bytes, offset: int) -> bytes:
    index = HASH_SIZE + offset
    return value[:index] + bytes([value[index] ^ 0x01]) + value[index + 1:]


def flip_byte(store: AuditStore, position: int, offset: int = 5) -> None:
    """Flip one bit of the record stored at `position` (`offset` bytes into the record)."""
    if store_kind(store.location) == "postgresql":
        _sql(store, "UPDATE chatledger.events SET record = set_byte(record, %(at)s,"
                    " get_byte(record, %(at)s) # 1) WHERE position = %(position)s",
             {"at": offset, "position": position})
        return
    if isinstance(store, MemoryStore):
        data = store.data
        with data.lock:
            data.values[position - 1] = _flipped(data.values[position - 1], offset)
        return
    from chatledger.storage.lmdb import EventLog, layout

    assert isinstance(store, EventLog)
    ledger = store.store

    def flip(txn: Any) -> None:
        key = layout.position_key(position)
        txn.put(key, _flipped(bytes(txn.get(key, db=ledger.log_db)), offset), db=ledger.log_db)

    store.run_in_writer(flip)


def truncate(store: AuditStore, keep: int) -> None:
    """Drop every record after position `keep` and point the stored head at `keep`, as one
    who wants the removal to go unnoticed would (the stream and session indexes are left)."""
    records = dict(store.read_raw())
    head_hash = records[keep][:HASH_SIZE] if keep else bytes(HASH_SIZE)
    if store_kind(store.location) == "postgresql":
        _sql(store, "WITH cut AS (DELETE FROM chatledger.events WHERE position > %s)"
                    " UPDATE chatledger.seal SET position = %s, hash = %s",
             [keep, keep, head_hash])
        return
    if isinstance(store, MemoryStore):
        from chatledger.storage.hashing import Head

        data = store.data
        with data.lock:
            del data.values[keep:]
            data.head = Head(keep, head_hash)
        return
    from chatledger.storage.lmdb import EventLog, layout

    assert isinstance(store, EventLog)
    ledger = store.store

    def cut(txn: Any) -> None:
        for position in records:
            if position > keep:
                txn.delete(layout.position_key(position), db=ledger.log_db)
        txn.put(layout.META_HEAD, layout.encode_head(keep, head_hash), db=ledger.meta_db)

    store.run_in_writer(cut)


def forge_index_entry(store: AuditStore, session_id: str, **info_changes: Any) -> None:
    """Rewrite a session's index entry with some of its info changed (the log untouched)."""
    entry = store.index_entry(session_id)
    assert entry is not None
    forged = IndexEntry(msgspec.structs.replace(entry.info, **info_changes), entry.last_hash)
    if store_kind(store.location) == "postgresql":
        from chatledger.storage.postgresql.records import encode_info

        _sql(store, "UPDATE chatledger.sessions SET info = %s WHERE session_id = %s",
             [encode_info(forged.info), session_id])
        return
    if isinstance(store, MemoryStore):
        store.data.index[session_id] = forged
        return
    from chatledger.storage.lmdb import EventLog, layout

    assert isinstance(store, EventLog)
    ledger = store.store
    store.run_in_writer(lambda txn: txn.put(
        layout.session_key(session_id), layout.encode_index_entry(forged), db=ledger.sessions_db
    ))


def rewrite_record(store: AuditStore, position: int, record: bytes) -> None:
    """Replace the record stored at `position` (its stored hash kept), as one editing the
    file would."""
    if store_kind(store.location) == "postgresql":
        _sql(store, "UPDATE chatledger.events SET record = %s WHERE position = %s",
             [record, position])
        return
    stored_hash = dict(store.read_raw())[position][:HASH_SIZE]
    if isinstance(store, MemoryStore):
        data = store.data
        with data.lock:
            data.values[position - 1] = stored_hash + record
        return
    from chatledger.storage.lmdb import EventLog, layout

    assert isinstance(store, EventLog)
    ledger = store.store
    store.run_in_writer(lambda txn: txn.put(
        layout.position_key(position), stored_hash + record, db=ledger.log_db
    ))
