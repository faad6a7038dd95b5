"""How an agent CLI is driven: its dialect (argv and permissions per mode, environment,
output reader, outcome classification, MCP config shape), private MCP config files, the
subprocess runner (a `RunSpec` in, typed updates out, a `RunOutcome` back), the prompt
builder and canvas-change extraction. The stand-in agent lives in `chatledger.testing`.

Agent processes are started here only: by the runner, through the per-run reaper on Linux,
and the orphan guard it starts. It imports nothing from `actors/`, `storage/` or the
interfaces; it builds on `events/` alone.
"""

from .cancel import CancelSwitch
from .canvas import (
    CANVAS_TOOL_SUFFIX,
    canonical_json,
    extract_from_text,
    extract_from_tool_calls,
    extract_modifications,
)
from .dialect import AgentDialect, FinishedTurn, OutputReader, TurnOptions
from .dialects import DIALECTS, dialect_names, get_dialect, select_dialect
from .dialects.claude import CLAUDE, NOT_FOUND_MESSAGE, OUTPUT_FORMATS, build_argv
from .dialects.standin import STANDIN
from .environment import agent_environment
from .mcp import McpConfigError, McpConfigFiles, validate_servers
from .prompt import MESSAGE_HEADER, TEMPLATE_VERSION, Prompt, build_prompt, prompt_digest
from .run_types import (
    AgentInit,
    AgentResult,
    AgentUpdate,
    ApiRetried,
    Classification,
    ParsedResult,
    RunOutcome,
    RunSpec,
    TextDelta,
    TextReset,
    ToolCallCompleted,
    TranscriptFrame,
)
from .runner import human_duration, run_agent, run_turn
from .stream_json import StreamJsonParser, decode_tool_output

__all__ = [
    "CANVAS_TOOL_SUFFIX",
    "CLAUDE",
    "DIALECTS",
    "MESSAGE_HEADER",
    "NOT_FOUND_MESSAGE",
    "OUTPUT_FORMATS",
    "STANDIN",
    "TEMPLATE_VERSION",
    "AgentDialect",
    "AgentInit",
    "AgentResult",
    "AgentUpdate",
    "ApiRetried",
    "CancelSwitch",
    "Classification",
    "FinishedTurn",
    "McpConfigError",
    "McpConfigFiles",
    "OutputReader",
    "ParsedResult",
    "Prompt",
    "RunOutcome",
    "RunSpec",
    "StreamJsonParser",
    "TextDelta",
    "TranscriptFrame",
    "TextReset",
    "ToolCallCompleted",
    "TurnOptions",
    "agent_environment",
    "build_argv",
    "build_prompt",
    "canonical_json",
    "decode_tool_output",
    "dialect_names",
    "extract_from_text",
    "extract_from_tool_calls",
    "extract_modifications",
    "get_dialect",
    "human_duration",
    "prompt_digest",
    "run_agent",
    "run_turn",
    "select_dialect",
    "validate_servers",
]
