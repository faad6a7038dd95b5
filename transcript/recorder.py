"""`TranscriptRecorder`: keeps the `transcript_mirror` frames of one agent run in the ledger.

The runner's reading thread hands each frame to `feed`, which only queues it: the answer's
stream is never held up by a ledger commit. One worker thread per recorder appends the
frames in order through `LedgerSessionStore.append_blocking` (durable, hash-chained,
idempotent by entry uuid, tied to the chatledger turn and session), including the frames
claude prints after its `result` line; `close` waits for them, bounded in time. A frame
whose file is not under the agent's projects dir is counted and dropped. Starts no
processes; its one thread starts with the recorder (create it before the run) and ends
with `close`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..sdk_store.store import LedgerSessionStore
from .mirror import MirrorFrame, key_for_transcript_file

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass
class RecorderReport:
    """What a recorder did: frames taken, entries new to the ledger, frames it could not keep."""

    frames: int = 0
    entries_recorded: int = 0
    frames_dropped: int = 0
    errors: list[str] = field(default_factory=list)
    agent_session_ids: set[str] = field(default_factory=set)
    finished: bool = True


class TranscriptRecorder:
    """Records one run's mirror frames, for chatledger `turn` of session `turn_session_id`."""

    def __init__(self, store: LedgerSessionStore, projects: str | os.PathLike[str], *,
                 turn: int, turn_session_id: str) -> None:
        self.store = store
        self.projects = Path(projects)
        self.turn = turn
        self.turn_session_id = turn_session_id
        self.report = RecorderReport()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        # Started here, before the run, so that feeding the first frame costs no thread start.
        self._worker = threading.Thread(target=self._record_frames, daemon=True,
                                        name=f"chatledger-mirror-{turn_session_id}")
        self._worker.start()

    def feed(self, frame: MirrorFrame) -> None:
        """Queue a frame to be recorded. Never blocks; call it from the reading thread."""
        if self._closed:
            raise RuntimeError("the recorder is closed")
        self.report.frames += 1
        self._queue.put(frame)

    def close(self, timeout: float = 10.0) -> RecorderReport:
        """Wait (at most `timeout` s) until every queued frame is in the ledger; the report
        says `finished=False` if the time ran out (the worker still finishes on its own)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join(timeout)
        self.report.finished = not self._worker.is_alive()
        return self.report

    def _record_frames(self) -> None:
        """Append queued frames in order until told to stop. Runs on the recorder's thread."""
        while True:
            frame = self._queue.get()
            if frame is _STOP:
                return
            assert isinstance(frame, MirrorFrame)
            self._record(frame)

    def _record(self, frame: MirrorFrame) -> None:
        key = key_for_transcript_file(frame.file_path, self.projects)
        if key is None:
            self.report.frames_dropped += 1
            self.report.errors.append(f"{frame.file_path} is not under {self.projects}")
            return
        started = time.monotonic()
        for attempt in range(3):
            try:
                self.report.entries_recorded += self.store.append_blocking(
                    key._asdict(), frame.entries, turn=self.turn,
                    turn_session_id=self.turn_session_id)
                self.report.agent_session_ids.add(key.session_id)
                return
            except Exception as error:  # noqa: BLE001 - recorded in the report, never raised
                logger.warning("could not record a transcript frame (attempt %d): %s",
                               attempt + 1, error)
                last = error
                time.sleep(0.05 * (attempt + 1))
        self.report.frames_dropped += 1
        self.report.errors.append(
            f"{frame.file_path}: {last} (after {time.monotonic() - started:.2f} s)")
