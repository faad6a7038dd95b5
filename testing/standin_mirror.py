"""The stand-in's `--session-mirror`: claude's `transcript_mirror` frames, made up offline.

With the flag, the stand-in prints what claude would append to its transcript file
(`<CLAUDE_CONFIG_DIR or HOME/.claude>/projects/<cwd slug>/<session>.jsonl`): one frame with
the turn's user and assistant entries just before the result line, and one with a
`last-prompt` entry after it (claude mirrors that one after its result too). It only prints
frames; it never writes the transcript file (the stand-in must not litter a real HOME).
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .standin_agent import Agent


def transcript_path(environ: dict[str, str] | os._Environ[str], cwd: str, session_id: str) -> str:
    """Where claude would keep this session's transcript (short working directories only:
    claude shortens slugs past 200 characters with a hash the stand-in does not make)."""
    config = environ.get("CLAUDE_CONFIG_DIR")
    projects = (os.path.join(config, "projects") if config
                else os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".claude",
                                  "projects"))
    slug = re.sub(r"[^a-zA-Z0-9]", "-", os.path.realpath(cwd))
    return os.path.join(projects, slug, f"{session_id}.jsonl")


class TranscriptMirror:
    """Prints one turn's mirror frames through its agent's stdout."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.path = transcript_path(os.environ, os.getcwd(), agent.session_id)
        self.last_uuid: str | None = None

    def _entry(self, kind: str, **fields: Any) -> dict[str, Any]:
        entry_uuid = str(uuid.uuid4())
        entry = {"type": kind, "uuid": entry_uuid, "parentUuid": self.last_uuid,
                 "sessionId": self.agent.session_id, "cwd": os.getcwd(),
                 "timestamp": datetime.now(timezone.utc).isoformat(), **fields}
        self.last_uuid = entry_uuid
        return entry

    def _frame(self, entries: list[dict[str, Any]]) -> None:
        self.agent.line({"type": "transcript_mirror", "filePath": self.path, "entries": entries})

    def before_result(self, text: str) -> None:
        """The turn's prompt and answer, as claude mirrors them before its result line."""
        self._frame([
            self._entry("user", message={"role": "user", "content": self.agent.prompt}),
            self._entry("assistant", message={"role": "assistant",
                                              "content": [{"type": "text", "text": text}]}),
        ])

    def after_result(self) -> None:
        """The `last-prompt` entry (no uuid), which claude mirrors after its result line."""
        self._frame([{"type": "last-prompt", "lastPrompt": self.agent.prompt[:200],
                      "sessionId": self.agent.session_id}])
