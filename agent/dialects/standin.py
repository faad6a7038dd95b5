"""The stand-in dialect: chatledger's testing agent (`python -m chatledger.testing.standin`).

The stand-in speaks claude's protocol on purpose (so a backend can be exercised without an
LLM), so this dialect reuses the claude module's argv, reader, classifier and MCP file
shape. It differs where the stand-in does: it needs none of claude's environment variables,
and a missing stand-in is a broken Python install, not a missing npm package. It is also
the example of a dialect: a new agent CLI is a module like this one (a class with these
methods) plus one line in `agent/dialects/__init__.py`. This module starts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..dialect import FinishedTurn, OutputReader, TurnOptions
from ..run_types import Classification
from . import claude

NAME = "standin"

STANDIN_MODULES = ("chatledger.testing.standin", "chatledger.agent.standin")
"""The module names that run the stand-in (`python -m NAME`); the second is the old alias."""


def runs_standin(command: Sequence[str]) -> bool:
    """Whether a command line runs the stand-in (`... -m chatledger.testing.standin`)."""
    return any(word in STANDIN_MODULES for word in command)


class StandinDialect:
    """The stand-in agent: claude's flags and stream-json, no claude environment."""

    name = NAME
    output_formats = claude.OUTPUT_FORMATS
    supports_transcript_mirror = True
    resumes_from_transcript_file = False  # it keeps sessions in CHATLEDGER_STANDIN_SESSIONS

    def turn_argv(self, command: Sequence[str], options: TurnOptions) -> list[str]:
        """claude's argv (the stand-in reads the same flags)."""
        return claude.CLAUDE.turn_argv(command, options)

    def environment_defaults(self, timeout: float) -> Mapping[str, str]:
        """Nothing: the stand-in neither retries nor waits on an API."""
        return {}

    def output_reader(self, output_format: str) -> OutputReader:
        """claude's readers."""
        return claude.claude_output_reader(output_format)

    def classify(self, turn: FinishedTurn) -> Classification:
        """claude's verdict (the stand-in fails the way claude does)."""
        return claude.classify_claude_turn(turn)

    def mcp_config_document(self, servers: Mapping[str, Any]) -> dict[str, Any]:
        """claude's `{"mcpServers": ...}` file."""
        return claude.claude_mcp_config_document(servers)

    def not_found_message(self, program: str) -> str:
        """A stand-in that cannot start means its Python cannot be found."""
        return (f"the stand-in agent cannot be started: no {program!r} was found (run it "
                "with the Python that has chatledger installed)")


STANDIN = StandinDialect()
