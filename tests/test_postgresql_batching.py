"""The `batching` setting of the PostgreSQL store against a real throwaway cluster: with
`gather` a lone node's next leader waits for the callers the batch before answered and takes
them with the others; a mode it does not know is refused before anything is opened. (The
policy that picks a mode under `adaptive` is tested on its own in test_batch_policy.py.)"""

from __future__ import annotations

import os
import threading

import pytest

try:
    import psycopg  # noqa: F401 - only whether it is installed
except ImportError:  # pragma: no cover - the extra is not installed
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("psycopg is not installed: pip install -e '.[postgresql]'",
                allow_module_level=True)

from testkit import wait_until
from writer_batches import appending_twice, record_batches

from chatledger.events import MessageSent, SessionCreated
from chatledger.storage.postgresql import open_postgresql_store
from chatledger.storage.postgresql.batching import BatchPolicy


def message(text: str) -> list[MessageSent]:
    """One message event."""
    return [MessageSent(turn=1, text=text)]


def test_a_gathering_leader_takes_the_callers_the_batch_before_answered(
        postgres_url: str) -> None:
    """a and c are written together while b comes; the leader b waits, once a and c are
    answered, for their second appends and takes them with its own. (One batch in the
    pipeline at a time, so that b leads only once a and c's batch is answered.)"""
    store = open_postgresql_store(postgres_url, batching="gather", pipeline_depth=1,
                                  seal_interval=3600)
    writer = store.writer
    writer.gather_wait = 30.0  # the test waits for the callers, never for this bound
    first_two = [appending_twice(store, session_id) for session_id in "ac"]
    late = threading.Thread(target=lambda: store.append("b", message("late"), 1))
    befores: list[str] = []

    def choreography(stage: str, connection: object) -> None:
        if stage != "before_commit":
            return
        befores.append(stage)
        if len(befores) == 1:  # the holder's batch: a and c wait behind it
            for thread in first_two:
                thread.start()
            assert writer.wait_queued(2, 30) and writer.queued() == 2
        elif len(befores) == 2:  # a and c are being written: b waits behind them
            late.start()
            assert writer.wait_queued(1, 30) and writer.queued() == 1

    try:
        for session_id in ("holder", "a", "b", "c"):
            store.append(session_id, [SessionCreated()], 0)
        batches = record_batches(writer)
        writer.fault = choreography
        store.append("holder", message("holding"), 1)
        for thread in (*first_two, late):
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in (*first_two, late))
        assert batches == [["holder"], ["a", "c"], ["a", "b", "c"]]
        assert {info.session_id: info.version for info in store.sessions()} == {
            "holder": 2, "a": 3, "b": 2, "c": 3}
        assert store.verify().ok
    finally:
        writer.fault = None
        store.close()


def test_an_adaptive_writer_measures_its_appends_and_gathers_when_its_policy_says(
        postgres_url: str) -> None:
    """The writer feeds the policy each append's time in `write` (so it makes tries) and
    gathers while a try says so (so the policy hears of leaders that waited); a policy with
    short windows makes several tries in a few seconds."""
    store = open_postgresql_store(postgres_url, seal_interval=3600)
    policy = BatchPolicy(window=0.02, hold=1, pairs=1, min_samples=4)
    store.writer.policy = policy
    waits: list[None] = []
    note_wait = policy.note_wait

    def counted() -> None:
        waits.append(None)
        note_wait()

    policy.note_wait = counted  # type: ignore[method-assign]
    stop = threading.Event()

    def appender(session_id: str) -> None:
        store.append(session_id, [SessionCreated()], 0)
        version = 1
        while not stop.is_set():
            store.append(session_id, message(f"turn {version}"), version)
            version += 1

    threads = [threading.Thread(target=appender, args=(f"s{number}",)) for number in range(8)]
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: policy.tries >= 3 and len(waits) > 0, timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    try:
        assert not any(thread.is_alive() for thread in threads)
        assert store.verify().ok
    finally:
        store.close()


def test_an_unknown_batching_mode_is_refused_before_anything_is_opened(
        postgres_url: str) -> None:
    threads = threading.active_count()
    with pytest.raises(ValueError, match="unknown batching mode 'sometimes'"):
        open_postgresql_store(postgres_url, batching="sometimes")
    assert threading.active_count() == threads
    for mode in ("adaptive", "eager", "gather"):
        store = open_postgresql_store(postgres_url, batching=mode)
        try:
            assert store.writer.policy.mode == mode
        finally:
            store.close()
