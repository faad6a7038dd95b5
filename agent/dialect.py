"""The agent dialect: everything specific to one agent CLI, behind one small interface.

A dialect says how to start a turn (`turn_argv`: permissions per mode, MCP config, the
agent's own session to start or resume, values that could look like flags passed in
`--flag=value` form), what environment the agent needs besides ours
(`environment_defaults`), how to read its output (`output_reader`), how a finished turn is
classified (`classify`: an error it reported, a missing result, a session it lost), what its
MCP config file holds (`mcp_config_document`) and what to say when it is not installed
(`not_found_message`). The runner moves bytes and signals and the actors keep order and
record events; neither knows any of this. Dialects are registered by name in
`agent.dialects`. This module defines shapes only: it starts nothing and reads nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec

from .run_types import AgentUpdate, Classification, ParsedResult, RunSpec


class TurnOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What a session asks of one turn, in no agent's words: the dialect turns it into argv.

    `allowed_tools` is the user-mode allow-list (power mode needs none); `mcp_config_path`
    a file written with the dialect's `mcp_config_document`; at most one of
    `resume_session_id` (go on with the agent's own session) and `new_session_id`;
    `transcript_mirror` asks the agent to print its transcript entries as it writes them
    (only for a dialect whose `supports_transcript_mirror` is true).
    `live` asks for a long-lived process that takes turns as stream-json lines on stdin
    and speaks the control protocol (a dialect that cannot raises ValueError);
    `permission_prompt` has it put tool calls outside the allow-list to the caller.
    """

    mode: str
    output_format: str = "stream-json"
    allowed_tools: tuple[str, ...] = ()
    mcp_config_path: str | None = None
    include_partial_messages: bool = False
    resume_session_id: str | None = None
    new_session_id: str | None = None
    transcript_mirror: bool = False
    live: bool = False
    permission_prompt: bool = False
    fork_session: bool = False
    """With `resume_session_id`: the agent continues that session under a new id (a fork)."""


class FinishedTurn(msgspec.Struct, frozen=True, kw_only=True):
    """What a dialect classifies: the turn's spec, what its output amounted to and how the
    agent ended (`exit_code` None: it is still running, or would not die)."""

    spec: RunSpec
    parsed: ParsedResult
    exit_code: int | None
    stderr_tail: str


class OutputReader(Protocol):
    """Reads one turn's stdout, fed raw chunks on the run's thread; never raises on what
    the agent prints."""

    def feed(self, chunk: bytes) -> list[AgentUpdate]:
        """The updates this chunk completes."""

    def end(self) -> list[AgentUpdate]:
        """The updates still pending once the output has ended (call once)."""

    def result(self) -> ParsedResult:
        """Everything the output said, folded into one result."""


class AgentDialect(Protocol):
    """One agent CLI's protocol. Implementations are immutable and thread-safe."""

    @property
    def name(self) -> str:
        """The registered name (`agent_dialect` setting)."""

    @property
    def output_formats(self) -> tuple[str, ...]:
        """The output formats this dialect can read, the default first."""

    @property
    def supports_transcript_mirror(self) -> bool:
        """Whether the agent can print its own transcript entries in its stream-json output
        (read as `TranscriptFrame` updates), so the ledger can keep them."""

    @property
    def resumes_from_transcript_file(self) -> bool:
        """Whether resuming the agent's session reads its transcript file (claude's
        `<projects>/<cwd slug>/<id>.jsonl`), which the ledger can then write back first."""

    def turn_argv(self, command: Sequence[str], options: TurnOptions) -> list[str]:
        """The argv of one non-interactive turn (the prompt goes to stdin); ValueError for
        options the agent cannot honour or values that could pose as flags."""

    def environment_defaults(self, timeout: float) -> Mapping[str, str]:
        """Variables the agent gets unless its environment already sets them."""

    def output_reader(self, output_format: str) -> OutputReader:
        """A fresh reader for one turn's output; ValueError for an unknown format."""

    def classify(self, turn: FinishedTurn) -> Classification:
        """Whether the turn succeeded and, if not, why (the runner has already ruled out a
        timeout, a cancel, an output flood and a killed agent)."""

    def mcp_config_document(self, servers: Mapping[str, Any]) -> dict[str, Any]:
        """The MCP config file's content for these (validated) servers."""

    def not_found_message(self, program: str) -> str:
        """What to tell the user when `program` is not installed."""
