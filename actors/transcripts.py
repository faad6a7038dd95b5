"""The run job's part in keeping claude's own transcript in the ledger (issue 20).

`TurnTranscript.for_turn` says what a planned turn needs (no I/O). On the run pool's
thread, before the agent is spawned, `begin` writes the transcript file the turn resumes
from the ledger into the agent's HOME/cwd when it is missing or behind (another node's
turns, claude's clean-up, a turn lost in the flush window), so the session can record
`TranscriptRestored`, and starts a `TranscriptRecorder` when the turn mirrors; `take` hands
the recorder each `TranscriptFrame` (it only queues: the streamed answer never waits on a
ledger commit), and `finish` waits, bounded, until every frame is in the ledger, then notes
claude's file as complete so the next resume on this node reads nothing. Nothing here runs
on an actor's thread, and nothing raises for a transcript problem: a turn runs on without
its mirror rather than fail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ..agent import AgentDialect, AgentUpdate, TranscriptFrame
from ..config import Config
from ..events import Event, RunStarted, TranscriptRestored
from ..sdk_store import LedgerSessionStore
from ..transcript import (
    CompleteFiles,
    MirrorFrame,
    RecorderReport,
    Restored,
    TranscriptRecorder,
    note_if_complete,
    project_key_for_directory,
    projects_dir,
    restore_transcript,
)
from .turn import TurnPlan

logger = logging.getLogger(__name__)

PLACE_VARIABLES = ("CLAUDE_CONFIG_DIR", "HOME", "USERPROFILE")
"""The variables that say where the agent keeps its transcripts (`projects_dir`)."""

CLOSE_TIMEOUT = 10.0
"""How long a finished run waits for its last mirror frames to be committed."""


def agent_places(agent_env: Mapping[str, str], agent_cwd: str | None) -> tuple[Path, str]:
    """Where the agent keeps transcripts (its projects dir: CLAUDE_CONFIG_DIR, else HOME, of
    our environment with `agent_env` on top) and the project key of its working directory."""
    # only the variables projects_dir reads: copying all of os.environ costs ~60 us a turn
    environment = {name: value for name in PLACE_VARIABLES
                   if (value := agent_env.get(name, os.environ.get(name))) is not None}
    return projects_dir(environment), project_key_for_directory(agent_cwd or os.getcwd())


class Transcripts:
    """A runtime's transcript services: the SDK store over its log, and the files found
    complete on this node (so a resume on it reads no file while nothing moved)."""

    def __init__(self, store: LedgerSessionStore) -> None:
        self.store = store
        self.complete_files = CompleteFiles()


class TurnTranscript:
    """One run's transcript upkeep: the restore done before it, and its mirror recorder."""

    def __init__(self, transcripts: Transcripts, *, turn: int, session_id: str, mirror: bool,
                 resume_agent_session_id: str | None, agent_env: Mapping[str, str],
                 agent_cwd: str | None, resumes_from_file: bool = True) -> None:
        self.transcripts = transcripts
        self.store = transcripts.store
        self.resumes_from_file = resumes_from_file
        self.projects = Path()
        self.turn = turn
        self.session_id = session_id
        self.mirror = mirror
        self.resume_agent_session_id = resume_agent_session_id
        self.agent_env = agent_env
        self.agent_cwd = agent_cwd
        self.project_key = ""
        self.restored: Restored | None = None
        self.recorder: TranscriptRecorder | None = None
        self.begun = False
        self.report: RecorderReport | None = None

    @classmethod
    def for_turn(cls, transcripts: Transcripts | None, dialect: AgentDialect, plan: TurnPlan,
                 session_id: str, config: Config) -> TurnTranscript | None:
        """The upkeep a planned turn needs (None: none): a mirror if it runs with one, a
        restore if it resumes an agent that reads its transcript file. Does no I/O."""
        started = plan.events[-1] if plan.events else None
        resume_id = started.resume_agent_session_id if isinstance(started, RunStarted) else None
        if not dialect.resumes_from_transcript_file:
            resume_id = None
        if transcripts is None or not (plan.transcript_mirror or resume_id):
            return None
        return cls(transcripts, turn=plan.turn, session_id=session_id,
                   mirror=plan.transcript_mirror, resume_agent_session_id=resume_id,
                   agent_env=config.agent_env, agent_cwd=config.agent_cwd,
                   resumes_from_file=dialect.resumes_from_transcript_file)

    def begin(self, restore: bool = True) -> None:
        """Restore the file to resume from (if the ledger has more than it; `restore` False
        skips it, for a turn given to a live process that already read the file), then
        ready the recorder (if the turn mirrors: its thread starts with the first frame,
        so that the user line does not wait for a thread start). BLOCKING (a ledger read, a
        file write): call it on the run's thread before the agent is spawned."""
        if self.resume_agent_session_id and restore:
            self._find_places()
            try:
                self.restored = restore_transcript(self.store, self.projects, self.project_key,
                                                   self.resume_agent_session_id,
                                                   self.transcripts.complete_files)
            except Exception:  # noqa: BLE001 - claude may still have it; else the fallback
                logger.exception("could not restore transcript %s of session %s",
                                 self.resume_agent_session_id, self.session_id)
        self.begun = True

    def take(self, update: AgentUpdate) -> bool:
        """Queue a transcript frame for the ledger (the first one starts the recorder);
        whether `update` was one (then it is not for the caller). Never blocks on the
        ledger. Call it on the run's thread."""
        if not isinstance(update, TranscriptFrame):
            return False
        if self.recorder is None and self.mirror and self.begun:
            self._find_places()
            self.recorder = TranscriptRecorder(self.store, self.projects, turn=self.turn,
                                               turn_session_id=self.session_id)
        if self.recorder is not None:
            self.recorder.feed(MirrorFrame(update.file_path, list(update.entries)))
        return True

    def _find_places(self) -> None:
        """Where the agent keeps its transcripts, found when first needed: a live turn with
        nothing to restore and no frame makes no system call for it (each one lets other
        threads take the GIL before the user line is written)."""
        if not self.project_key:
            self.projects, self.project_key = agent_places(self.agent_env, self.agent_cwd)

    def finish(self, timeout: float = CLOSE_TIMEOUT) -> RecorderReport | None:
        """Wait (at most `timeout` s) until the run's frames are in the ledger; the report.
        BLOCKING; call it on the run's thread once the agent has ended."""
        if self.recorder is None:
            return None
        self.report = self.recorder.close(timeout)
        if self.resumes_from_file and self.report.finished:
            # Checked now, after the answer, so the next resume here need not read the file.
            for agent_session in self.report.agent_session_ids:
                try:
                    note_if_complete(self.store, self.projects, self.project_key, agent_session,
                                     self.transcripts.complete_files)
                except Exception:  # noqa: BLE001 - only a shortcut is lost
                    logger.exception("could not check transcript %s", agent_session)
        if not self.report.finished or self.report.errors:
            logger.warning("turn %d's transcript mirror: %d of %d frames not kept%s: %s",
                           self.turn, self.report.frames_dropped, self.report.frames,
                           "" if self.report.finished else " (still committing)",
                           "; ".join(self.report.errors[:3]))
        return self.report

    def events(self) -> list[Event]:
        """What the session records about this upkeep: `TranscriptRestored` if it restored."""
        if self.restored is None:
            return []
        return [TranscriptRestored(
            turn=self.turn, agent_session_id=self.resume_agent_session_id or "",
            project_key=self.project_key, entry_count=self.restored.entry_count,
            reason=self.restored.reason)]
