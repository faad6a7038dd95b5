"""The store contract: every store behaves the same through the port.

One `store` fixture, parametrised over the factory table in tests/support/stores.py
(`STORE_LOCATIONS`: memory, LMDB and PostgreSQL today); a new store joins by adding one entry there,
never by copying tests. Failures name their store: `test_x[store=memory]`.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from stores import STORE_LOCATIONS, flip_byte, forge_index_entry, rewrite_record, truncate
from testkit import wait_until

from chatledger.audit.session_check import verify_session
from chatledger.errors import (
    ConcurrencyError,
    InvalidSessionIdError,
    LedgerClosedError,
    LedgerError,
    LedgerMissingError,
    StaleLeaseError,
    UnknownSessionError,
)
from chatledger.events import MessageSent, ModeSwitched, ResponseReceived, SessionCreated
from chatledger.events.codec import (
    decode_envelope,
    decode_event,
    decode_record,
    decode_sealed,
    is_sealed,
)
from chatledger.events.content import REDACTED_TEXT
from chatledger.events.model import Redacted
from chatledger.storage import (
    GENESIS,
    AuditStore,
    Head,
    Lease,
    LeaseOwner,
    LeaseRequest,
    SessionAppend,
    append_taking_lease,
    forget_memory_store,
    open_store,
    record_hash,
)
from chatledger.storage.hashing import HASH_SIZE, examine_record
from chatledger.storage.redaction import RedactionRefusedError, without_content


def _forget(location: str) -> None:
    if location.startswith("memory:"):
        forget_memory_store(location.removeprefix("memory:"))


@pytest.fixture(params=sorted(STORE_LOCATIONS), ids=lambda name: f"store={name}")
def location(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh location of each store in turn."""
    fresh = STORE_LOCATIONS[request.param](request)
    yield fresh
    _forget(fresh)


@pytest.fixture
def store(location: str) -> Iterator[AuditStore]:
    """An open, empty store of each kind in turn, closed after the test."""
    with open_store(location) as opened:
        yield opened


def conversation(store: AuditStore, session_id: str = "s", turns: int = 2) -> None:
    """A session with a few turns: created, then a message and an answer per turn."""
    store.append(session_id, [SessionCreated(study_id="study")], 0)
    for turn in range(1, turns + 1):
        store.append(
            session_id,
            [MessageSent(turn=turn, text=f"question {turn}"),
             ResponseReceived(turn=turn, text=f"answer {turn}")],
            store.require_info(session_id).version,
        )


def test_append_records_versions_positions_and_both_hash_links(store: AuditStore) -> None:
    first = store.append("a", [SessionCreated(), MessageSent(turn=1, text="hi")], 0)
    second = store.append("b", [SessionCreated(mode="power")], 0)
    assert [(r.session_id, r.version, r.position) for r in first + second] == [
        ("a", 1, 1), ("a", 2, 2), ("b", 1, 3)
    ]
    raw = dict(store.read_raw())
    hashes = {position: record_hash(value[HASH_SIZE:]) for position, value in raw.items()}
    assert all(raw[position][:HASH_SIZE] == digest for position, digest in hashes.items())
    assert first[0].prev_log_hash == GENESIS and first[0].prev_session_hash == GENESIS
    assert first[1].prev_log_hash == hashes[1] and first[1].prev_session_hash == hashes[1]
    assert second[0].prev_log_hash == hashes[2] and second[0].prev_session_hash == GENESIS
    info = store.require_info("a")
    assert (info.version, info.message_count) == (2, 1)


def test_stale_expected_version_writes_nothing(store: AuditStore) -> None:
    store.append("s", [SessionCreated()], 0)
    head = store.head()
    with pytest.raises(ConcurrencyError) as raised:
        store.append("s", [ModeSwitched(from_mode="user", to_mode="power")], 0)
    assert (raised.value.expected, raised.value.actual) == (0, 1)
    with pytest.raises(ConcurrencyError):
        store.append("new", [SessionCreated()], 3)
    assert store.head() == head
    assert [r.version for r in store.read_session("s")] == [1]
    assert store.info("new") is None and store.require_info("s").mode == "user"


def test_reads_of_a_session_of_the_log_and_of_the_latest_records(store: AuditStore) -> None:
    conversation(store, "a", turns=2)
    conversation(store, "b", turns=1)
    assert [r.version for r in store.read_session("a")] == [1, 2, 3, 4, 5]
    assert [r.version for r in store.read_session("a", from_version=4)] == [4, 5]
    assert store.read_session("nobody") == []
    assert [r.position for r in store.read_all()] == list(range(1, 9))
    assert [r.position for r in store.read_all(3, 5)] == [3, 4, 5]
    assert [r.position for r in store.read_all(7)] == [7, 8]
    info, tail = store.latest("a", 2)
    assert info is not None and info.version == 5
    assert [r.version for r in tail] == [4, 5]
    assert store.latest("nobody", 3) == (None, [])
    assert [position for position, _ in store.read_session_raw("b")] == [6, 7, 8]
    assert sorted(info.session_id for info in store.sessions()) == ["a", "b"]
    entry = store.index_entry("a")
    assert entry is not None and entry.last_hash == store.read_session_raw("a")[-1][1][:HASH_SIZE]


def test_an_atomic_multi_session_append_commits_all_or_nothing(store: AuditStore) -> None:
    store.append("old", [SessionCreated()], 0)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    written = store.append_atomically([
        SessionAppend("x", [SessionCreated(), MessageSent(turn=1, text="x")], 0, [when] * 2),
        SessionAppend("old", [MessageSent(turn=1, text="o")], 1),
    ])
    assert [[r.position for r in records] for records in written] == [[2, 3], [4]]
    assert [r.recorded_at for r in store.read_session("x")] == [when, when]
    head = store.head()
    with pytest.raises(ConcurrencyError):
        store.append_atomically([
            SessionAppend("y", [SessionCreated()], 0),
            SessionAppend("old", [MessageSent(turn=2, text="stale")], 1),
        ])
    assert store.head() == head and store.info("y") is None
    with pytest.raises(ValueError):
        store.append_atomically([SessionAppend("z", [SessionCreated()], 0)] * 2)
    assert store.head() == head


def test_a_subscription_catches_up_then_follows_live_appends(store: AuditStore) -> None:
    conversation(store, "s", turns=1)
    live = threading.Event()
    with store.subscribe(from_position=2, poll_interval=0.05) as subscription:
        caught_up = [subscription.get(timeout=5) for _ in range(2)]
        assert [r.position for r in caught_up if r is not None] == [2, 3]
        assert subscription.get(timeout=0.05) is None

        def writer() -> None:
            live.wait(5)
            store.append("s", [MessageSent(turn=2, text="later")], 3)

        thread = threading.Thread(target=writer)
        thread.start()
        live.set()
        followed = subscription.get(timeout=10)
        thread.join(10)
    assert followed is not None and followed.position == 4
    assert isinstance(followed.event, MessageSent) and followed.event.text == "later"


def test_the_head_names_the_last_position_and_its_stored_hash(store: AuditStore) -> None:
    assert store.head() == Head(0, GENESIS)
    conversation(store, "s", turns=1)
    position, value = list(store.read_raw())[-1]
    assert store.head() == Head(position, value[:HASH_SIZE]) and position == 3
    assert Head.parse(str(store.head())) == store.head()


def test_a_clean_store_verifies(store: AuditStore) -> None:
    conversation(store, "a")
    conversation(store, "b")
    report = store.verify(store.head())
    assert report.ok, report.problems
    assert (report.records_checked, report.sessions_checked) == (10, 2)
    assert report.head == store.head()
    assert verify_session(store, "a").ok


def test_a_flipped_byte_is_found_at_its_position(store: AuditStore) -> None:
    conversation(store, "a")
    conversation(store, "b")
    flip_byte(store, 7)
    report = store.verify()
    assert not report.ok
    assert report.first_bad_position == 7
    assert "altered" in (report.reason or "")
    session = verify_session(store, "b")
    assert not session.ok and session.first_bad_position == 7
    assert verify_session(store, "a").ok


def test_truncation_is_caught_against_a_saved_head(store: AuditStore) -> None:
    conversation(store, "s", turns=3)
    saved = store.head()
    truncate(store, saved.position - 2)
    assert store.head().position == saved.position - 2
    report = store.verify(saved)
    assert not report.ok
    assert any("truncated" in problem for problem in report.problems)


def test_rebuild_recomputes_a_damaged_session_index(store: AuditStore) -> None:
    conversation(store, "a")
    conversation(store, "b", turns=1)
    forge_index_entry(store, "a", mode="power")
    report = store.verify()
    assert not report.ok and "session index entry of 'a'" in (report.reason or "")
    assert store.rebuild_index() == 2
    assert store.verify().ok
    assert store.require_info("a").mode == "user"


def test_the_same_errors_for_bad_ids_unknown_sessions_and_closed_stores(location: str) -> None:
    store = open_store(location)
    with pytest.raises(InvalidSessionIdError):
        store.append("../etc", [SessionCreated()], 0)
    with pytest.raises(InvalidSessionIdError):
        store.read_session("")
    with pytest.raises(UnknownSessionError):
        store.require_info("nobody")
    store.append("s", [SessionCreated()], 0)
    store.close()
    with pytest.raises(LedgerClosedError):
        store.append("s", [MessageSent(turn=1, text="late")], 1)
    with pytest.raises(LedgerClosedError):
        store.head()


def test_a_reopened_store_holds_what_was_appended(location: str) -> None:
    with open_store(location) as store:
        conversation(store, "s")
        head = store.head()
    with open_store(location, create=False) as reopened:
        assert reopened.head() == head and reopened.verify().ok


def test_opening_without_create_where_nothing_is_raises(location: str) -> None:
    with pytest.raises(LedgerMissingError):
        open_store(location, create=False)


def test_appends_from_many_threads_keep_both_chains_intact(store: AuditStore) -> None:
    start = threading.Barrier(4)

    def client(index: int) -> None:
        start.wait(5)
        session_id = f"t{index}"
        store.append(session_id, [SessionCreated()], 0)
        for turn in range(1, 11):
            store.append(session_id, [MessageSent(turn=turn, text="x")], turn)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert store.head().position == 44
    assert store.verify().ok


def test_a_copy_opens_elsewhere_with_the_same_records(store: AuditStore, tmp_path: Path) -> None:
    conversation(store, "s")
    assert store.copy_to(tmp_path / "copy") > 0
    with open_store(tmp_path / "copy", create=False) as copy:
        assert list(copy.read_raw()) == list(store.read_raw())
        assert copy.verify().ok


def test_every_store_writes_the_same_bytes_and_hashes_for_the_same_events(
    request: pytest.FixtureRequest,
) -> None:
    when = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    stored: dict[str, list[tuple[int, bytes]]] = {}
    for name, fresh in STORE_LOCATIONS.items():
        location = fresh(request)
        with open_store(location) as store:
            store.append_atomically([SessionAppend(
                "s", [SessionCreated(), MessageSent(turn=1, text="same")], 0,
                [when, when + timedelta(seconds=1)],
            )])
            store.append_atomically([SessionAppend("t", [SessionCreated()], 0, [when])])
            stored[name] = list(store.read_raw())
        _forget(location)
    for values in stored.values():  # every hash by the same rule
        assert all(examine_record(value[HASH_SIZE:])[0] == value[:HASH_SIZE]
                   for _, value in values)
    shapes = {name: [_same_everywhere(value) for _, value in values]
              for name, values in stored.items()}
    first, *others = shapes.values()
    assert all(other == first for other in others)
    assert [shape[0] for shape in first] == [False, True, False]  # only the message is sealed


def _same_everywhere(value: bytes) -> tuple[object, ...]:
    """What every store writes alike for the same events: all but the random salt in each
    event with content, the commitment it changes, and the hash links that follow."""
    record = value[HASH_SIZE:]
    if is_sealed(record):
        parts = decode_sealed(record)
        return (True, parts.position, parts.session_id, parts.version, parts.recorded_at,
                parts.schema_version, decode_event(bytes(parts.event)), parts.redacted,
                len(parts.event), len(parts.commitment))
    envelope = decode_envelope(record)
    return (False, envelope.position, envelope.session_id, envelope.version,
            envelope.recorded_at, envelope.schema_version, bytes(envelope.event))


def test_a_postgresql_location_opens_the_postgresql_store_and_a_dead_server_is_named() -> None:
    with pytest.raises(LedgerError, match="127.0.0.1"):
        open_store("postgresql://ledger@127.0.0.1:1/chatledger", connect_timeout=2)


def test_the_port_and_the_factory_load_no_store_implementation_until_asked() -> None:
    probe = (
        "import sys\n"
        "import chatledger.storage, chatledger.storage.port, chatledger.audit.jsonl\n"
        "import chatledger.audit.stats, chatledger.audit.session_check\n"
        "from chatledger.storage import open_store\n"
        "with open_store('memory:') as store: store.head()\n"
        "assert 'lmdb' not in sys.modules, 'lmdb was imported'\n"
        "assert 'chatledger.storage.lmdb' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_verbatim_records_land_with_the_same_positions_hashes_and_head(
    store: AuditStore, tmp_path: Path
) -> None:
    conversation(store, "a")
    conversation(store, "b")
    store.append("a", [ModeSwitched(from_mode="user", to_mode="power")],
                 store.require_info("a").version)
    records = [value[HASH_SIZE:] for _, value in store.read_raw()]
    with open_store(str(tmp_path / "copy")) as copy:
        assert copy.append_verbatim(records[:4]).position == 4
        assert copy.append_verbatim(records[4:]) == store.head()
        assert list(copy.read_raw()) == list(store.read_raw())
        assert copy.require_info("a") == store.require_info("a")
        assert copy.verify(store.head()).ok


def test_verbatim_records_that_do_not_continue_the_log_write_nothing(store: AuditStore) -> None:
    source = open_store("memory:")
    conversation(source, "a")
    records = [value[HASH_SIZE:] for _, value in source.read_raw()]
    with pytest.raises(ConcurrencyError):
        store.append_verbatim(records[1:])
    with pytest.raises(ValueError):
        store.append_verbatim([records[0], records[2]])
    assert store.head() == Head(0, GENESIS)
    assert store.append_verbatim(records) == source.head()
    source.close()


# -- session leases: one owner at a time, fenced appends ----------------------------------

OWNER_A = LeaseOwner(host="host-a", pid=101, started_at=1.0, token="a")
OWNER_B = LeaseOwner(host="host-b", pid=202, started_at=2.0, token="b")


def test_a_lease_goes_to_one_owner_at_a_time(store: AuditStore) -> None:
    first = store.acquire_lease("s", OWNER_A, ttl=30)
    assert first is not None and first.epoch == 1 and first.owner == OWNER_A
    assert store.acquire_lease("s", OWNER_B, ttl=30) is None
    assert store.lease("s") == first


def test_reacquiring_ones_own_lease_keeps_its_epoch(store: AuditStore) -> None:
    first = store.acquire_lease("s", OWNER_A, ttl=30)
    again = store.acquire_lease("s", OWNER_A, ttl=30)
    assert first is not None and again is not None and again.epoch == first.epoch


def test_a_released_lease_goes_to_the_next_owner_with_a_higher_epoch(store: AuditStore) -> None:
    first = store.acquire_lease("s", OWNER_A, ttl=30)
    assert first is not None and store.release_lease(first)
    assert not store.release_lease(first)  # no longer ours to release
    second = store.acquire_lease("s", OWNER_B, ttl=30)
    assert second is not None and second.epoch == first.epoch + 1


def test_an_expired_lease_can_be_taken_over(store: AuditStore) -> None:
    first = store.acquire_lease("s", OWNER_A, ttl=0.05)
    assert first is not None
    assert wait_until_expired(store, "s")
    second = store.acquire_lease("s", OWNER_B, ttl=30)
    assert second is not None and second.epoch == first.epoch + 1
    assert store.renew_lease(first, ttl=30) is None  # the old owner lost it


def test_a_holder_known_dead_can_be_taken_over_at_once(store: AuditStore) -> None:
    store.acquire_lease("s", OWNER_A, ttl=30)
    assert store.acquire_lease("s", OWNER_B, ttl=30, take_over=OWNER_B) is None
    taken = store.acquire_lease("s", OWNER_B, ttl=30, take_over=OWNER_A)
    assert taken is not None and taken.owner == OWNER_B and taken.epoch == 2


def test_renewing_extends_a_lease_still_held(store: AuditStore) -> None:
    first = store.acquire_lease("s", OWNER_A, ttl=30)
    assert first is not None
    renewed = store.renew_lease(first, ttl=60)
    assert renewed is not None and renewed.epoch == first.epoch
    assert renewed.expires_at > first.expires_at


def test_an_append_under_a_stale_lease_writes_nothing(store: AuditStore) -> None:
    store.append("s", [SessionCreated(mode="user")], 0)
    first = store.acquire_lease("s", OWNER_A, ttl=30)
    assert first is not None
    store.append("s", [MessageSent(turn=1, text="a")], 1, lease=first)
    assert store.release_lease(first)
    second = store.acquire_lease("s", OWNER_B, ttl=30)
    assert second is not None
    head = store.head()
    with pytest.raises(StaleLeaseError):
        store.append("s", [MessageSent(turn=2, text="stale")], 2, lease=first)
    with pytest.raises(StaleLeaseError):
        store.append_atomically([SessionAppend("s", [MessageSent(turn=2, text="x")], 2,
                                               lease=first)])
    assert store.head() == head
    store.append("s", [MessageSent(turn=2, text="b")], 2, lease=second)
    assert store.version("s") == 3  # type: ignore[attr-defined]


def test_appends_without_a_lease_are_not_fenced(store: AuditStore) -> None:
    store.append("s", [SessionCreated(mode="user")], 0)
    store.acquire_lease("s", OWNER_A, ttl=30)
    store.append("s", [ModeSwitched(from_mode="user", to_mode="power")], 1)
    assert store.info("s").mode == "power"  # type: ignore[union-attr]


def test_a_lease_is_seen_by_another_handle(location: str) -> None:
    with open_store(location) as first, open_store(location) as second:
        lease = first.acquire_lease("s", OWNER_A, ttl=30)
        assert second.lease("s") == lease
        assert second.acquire_lease("s", OWNER_B, ttl=30) is None


def wait_until_expired(store: AuditStore, session_id: str, timeout: float = 5.0) -> bool:
    """Whether the session's lease expires (store clock) within `timeout` seconds."""
    def expired() -> bool:
        lease = store.lease(session_id)
        return lease is None or not lease.held_at(store.clock())

    return wait_until(expired, timeout)


def test_an_append_can_let_its_lease_go_in_the_same_step(store: AuditStore) -> None:
    store.append("s", [SessionCreated(mode="user")], 0)
    lease = store.acquire_lease("s", OWNER_A, ttl=30)
    assert lease is not None
    store.append("s", [MessageSent(turn=1, text="a")], 1, lease=lease, release_lease=True)
    freed = store.lease("s")
    assert freed is not None and freed.owner is None and freed.epoch == lease.epoch
    with pytest.raises(StaleLeaseError):
        store.append("s", [MessageSent(turn=2, text="b")], 2, lease=lease)
    with pytest.raises(ValueError):
        store.append("s", [MessageSent(turn=2, text="b")], 2, release_lease=True)
    second = store.acquire_lease("s", OWNER_B, ttl=30)
    assert second is not None and second.epoch == lease.epoch + 1


def _request(owner: LeaseOwner, epoch: int, take_over: LeaseOwner | None = None,
             ttl: float = 30) -> LeaseRequest:
    return LeaseRequest(lease=Lease(session_id="s", epoch=epoch, owner=owner), ttl=ttl,
                        take_over=take_over)


def test_taking_a_lease_with_an_append_grants_it_and_appends_under_it(
    store: AuditStore,
) -> None:
    store.append("s", [SessionCreated(mode="user")], 0)
    taken = append_taking_lease(store, "s", [MessageSent(turn=1, text="a")], 1,
                                _request(OWNER_A, 1))
    assert taken is not None
    lease, records = taken
    assert lease.epoch == 1 and lease.owner == OWNER_A and lease.held_at(store.clock())
    assert store.lease("s") == lease
    assert [record.version for record in records] == [2]
    assert [record.event for record in store.read_session("s", 2)] == [records[0].event]
    store.append("s", [MessageSent(turn=2, text="b")], 2, lease=lease)  # it fences as usual
    assert store.acquire_lease("s", OWNER_B, ttl=30) is None


def test_taking_a_lease_another_owner_holds_appends_nothing(store: AuditStore) -> None:
    store.append("s", [SessionCreated(mode="user")], 0)
    held = store.acquire_lease("s", OWNER_B, ttl=30)
    head = store.head()
    for epoch in (1, 2):
        assert append_taking_lease(store, "s", [MessageSent(turn=1, text="a")], 1,
                                   _request(OWNER_A, epoch)) is None
    assert store.head() == head and store.lease("s") == held


def test_taking_a_lease_whose_epoch_moved_appends_nothing_and_takes_nothing(
    store: AuditStore,
) -> None:
    store.append("s", [SessionCreated(mode="user")], 0)
    first = store.acquire_lease("s", OWNER_B, ttl=30)
    assert first is not None and store.release_lease(first)  # the next grant is epoch 2
    head = store.head()
    assert append_taking_lease(store, "s", [MessageSent(turn=1, text="a")], 1,
                               _request(OWNER_A, 1)) is None
    assert store.head() == head
    after = store.lease("s")
    assert after is not None and not after.held_at(store.clock())
    taken = append_taking_lease(store, "s", [MessageSent(turn=1, text="a")], 1,
                                _request(OWNER_A, after.epoch + 1))
    assert taken is not None and taken[0].epoch == after.epoch + 1


def test_taking_a_lease_from_a_holder_known_dead_appends_under_the_next_epoch(
    store: AuditStore,
) -> None:
    store.append("s", [SessionCreated(mode="user")], 0)
    store.acquire_lease("s", OWNER_B, ttl=30)
    taken = append_taking_lease(store, "s", [MessageSent(turn=1, text="a")], 1,
                                _request(OWNER_A, 2, take_over=OWNER_B))
    assert taken is not None and taken[0].owner == OWNER_A and store.version("s") == 2  # type: ignore[attr-defined]


def test_taking_a_lease_at_a_stale_version_appends_nothing_and_leaves_it_unheld(
    store: AuditStore,
) -> None:
    """Stale version: ConcurrencyError and no lease held afterwards. A one-step store checks
    the version in the transaction that would write the lease, so it never takes it; the
    two-step default takes it and lets it go again (its epoch then one higher)."""
    store.append("s", [SessionCreated(mode="user")], 0)
    head = store.head()
    with pytest.raises(ConcurrencyError):
        append_taking_lease(store, "s", [MessageSent(turn=1, text="a")], 0,
                            _request(OWNER_A, 1))
    assert store.head() == head
    after = store.lease("s")
    assert after is None or after.owner is None
    assert store.acquire_lease("s", OWNER_B, ttl=30) is not None


def test_a_fenced_holder_cannot_append_after_its_lease_was_taken_with_an_append(
    store: AuditStore,
) -> None:
    store.append("s", [SessionCreated(mode="user")], 0)
    old = store.acquire_lease("s", OWNER_B, ttl=0.05)
    assert old is not None and wait_until_expired(store, "s")
    taken = append_taking_lease(store, "s", [MessageSent(turn=1, text="a")], 1,
                                _request(OWNER_A, old.epoch + 1))
    assert taken is not None
    head = store.head()
    with pytest.raises(StaleLeaseError):
        store.append("s", [MessageSent(turn=2, text="stale")], 2, lease=old)
    assert store.head() == head


def test_taking_a_lease_needs_events_of_its_own_session(store: AuditStore) -> None:
    with pytest.raises(ValueError):
        append_taking_lease(store, "s", [], 0, _request(OWNER_A, 1))
    with pytest.raises(ValueError):
        append_taking_lease(store, "t", [SessionCreated(mode="user")], 0,
                            _request(OWNER_A, 1))
    assert store.head().position == 0 and store.lease("s") is None


# -- redaction -----------------------------------------------------------------------------


def _stored(store: AuditStore, position: int) -> bytes:
    return dict(store.read_raw())[position]


def test_a_redacted_record_loses_its_content_and_every_chain_still_verifies(
    store: AuditStore,
) -> None:
    conversation(store, "s")
    conversation(store, "t")
    before = _stored(store, 2)
    head = store.head()
    [redaction] = store.redact("s", 2, reason="personal data", redacted_by="dpo")
    after = _stored(store, 2)
    assert after[:HASH_SIZE] == before[:HASH_SIZE]  # the hash, so every link, unchanged
    assert b"question 1" in before and b"question 1" not in after
    assert bytes(decode_sealed(after[HASH_SIZE:]).event) == b"\xc0"  # nil: event and salt
    event = redaction.event
    assert isinstance(event, Redacted)
    assert (event.version, event.position, event.event_type, event.reason,
            event.redacted_by) == (2, 2, "message_sent", "personal data", "dpo")
    assert event.commitment == decode_sealed(before[HASH_SIZE:]).commitment
    assert (redaction.session_id, redaction.version) == ("s", 6)
    message = store.read_session("s")[1].event
    assert isinstance(message, MessageSent) and message.text == REDACTED_TEXT
    assert store.require_info("s").version == 6
    report = store.verify(head)
    assert report.ok, report.problems
    assert report.records_redacted == 1
    assert verify_session(store, "s").ok and verify_session(store, "s").records_redacted == 1


def test_a_flipped_byte_in_a_redacted_records_commitment_is_still_tampering(
    store: AuditStore,
) -> None:
    conversation(store, "s")
    store.redact("s", 3, reason="")
    record = _stored(store, 3)[HASH_SIZE:]
    flip_byte(store, 3, offset=len(record) - 8 - 5)  # inside the commitment (extents last)
    report = store.verify()
    assert not report.ok and report.first_bad_position == 3
    assert "altered" in (report.reason or "")


def test_content_edited_under_an_intact_hash_breaks_its_commitment(store: AuditStore) -> None:
    conversation(store, "s")
    record = _stored(store, 2)[HASH_SIZE:]
    rewrite_record(store, 2, record.replace(b"question 1", b"question 9"))
    report = store.verify()
    assert not report.ok and report.first_bad_position == 2
    assert "commitment" in (report.reason or "")
    with pytest.raises(RedactionRefusedError, match="fails its own check"):
        store.redact("s", 2)


def test_content_removed_without_a_redacted_event_is_reported(store: AuditStore) -> None:
    conversation(store, "s")
    stripped = without_content(_stored(store, 4))
    rewrite_record(store, 4, stripped[HASH_SIZE:])
    report = store.verify()
    assert not report.ok and "without a Redacted event" in (report.reason or "")


def test_erasing_a_whole_session_keeps_the_global_chain(store: AuditStore) -> None:
    conversation(store, "a", turns=2)
    conversation(store, "b", turns=1)
    store.append("a", [MessageSent(turn=3, text="late")], store.require_info("a").version)
    others = {position: value for position, value in store.read_raw()
              if decode_record(value[HASH_SIZE:]).session_id == "b"}
    written = store.redact("a", None, reason="erasure request")
    assert [(record.event.version, record.event.position) for record in written] == [
        (2, 2), (3, 3), (4, 4), (5, 5), (6, 9)]
    assert all(b"question" not in value and b"answer" not in value and b"late" not in value
               for position, value in store.read_raw() if position not in others)
    assert {position: value for position, value in store.read_raw()
            if position in others} == others
    report = store.verify()
    assert report.ok, report.problems
    assert report.records_redacted == 5
    assert store.redact("a", None) == []  # nothing left to redact


def test_a_redaction_that_cannot_be_done_changes_nothing(store: AuditStore) -> None:
    conversation(store, "s")
    store.redact("s", 2)
    head = store.head()
    with pytest.raises(RedactionRefusedError, match="no content"):
        store.redact("s", 1)  # session_created
    with pytest.raises(RedactionRefusedError, match="already redacted"):
        store.redact("s", 2)
    with pytest.raises(RedactionRefusedError, match="no version 99"):
        store.redact("s", 99)
    with pytest.raises(UnknownSessionError):
        store.redact("nobody", 1)
    assert store.head() == head and store.verify().ok


def test_a_redaction_recorded_but_not_done_is_finished_without_a_second_event(
    store: AuditStore,
) -> None:
    conversation(store, "s")
    commitment = decode_sealed(_stored(store, 2)[HASH_SIZE:]).commitment
    # As PostgreSQL leaves it when its process dies between the event and the removal.
    store.append("s", [Redacted(version=2, position=2, event_type="message_sent",
                                commitment=commitment)], store.require_info("s").version)
    assert store.redact("s", 2) == []
    assert b"question 1" not in _stored(store, 2)
    assert [r.version for r in store.read_session("s")][-1] == 6
    report = store.verify()
    assert report.ok and report.records_redacted == 1


def test_a_flipped_byte_in_a_records_extents_is_tampering(store: AuditStore) -> None:
    conversation(store, "s")
    record = _stored(store, 2)[HASH_SIZE:]
    for offset in (len(record) - 7, len(record) - 2):  # where the event starts; the seal's size
        flip_byte(store, 2, offset=offset)
        report = store.verify()
        assert not report.ok and report.first_bad_position == 2
        flip_byte(store, 2, offset=offset)
    assert store.verify().ok
