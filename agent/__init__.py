"""How the agent CLI is driven: argv and permissions, MCP config files, the subprocess
runner, the stream-json parser, the prompt builder, canvas-change extraction, and a stand-in
agent (`python -m chatledger.agent.standin`) that speaks claude's protocol.

Only this package starts processes (the runner, and the stand-in it may run). It imports
nothing from `actors/`, `storage/` or the interfaces; it builds on `events/` alone.
"""

from .argv import OUTPUT_FORMATS, build_argv
from .canvas import (
    CANVAS_TOOL_SUFFIX,
    canonical_json,
    extract_from_text,
    extract_from_tool_calls,
    extract_modifications,
)
from .mcp import McpConfigError, McpConfigFiles, validate_servers
from .prompt import MESSAGE_HEADER, TEMPLATE_VERSION, Prompt, build_prompt, prompt_digest
from .runner import (
    NOT_FOUND_MESSAGE,
    CancelSwitch,
    RunOutcome,
    agent_environment,
    human_duration,
    run_agent,
)
from .stream_json import (
    AgentEvent,
    AgentInit,
    AgentResult,
    ApiRetried,
    ParsedResult,
    StreamJsonParser,
    TextDelta,
    ToolCallCompleted,
    decode_tool_output,
)

__all__ = [
    "CANVAS_TOOL_SUFFIX",
    "MESSAGE_HEADER",
    "NOT_FOUND_MESSAGE",
    "OUTPUT_FORMATS",
    "TEMPLATE_VERSION",
    "AgentEvent",
    "AgentInit",
    "AgentResult",
    "ApiRetried",
    "CancelSwitch",
    "McpConfigError",
    "McpConfigFiles",
    "ParsedResult",
    "Prompt",
    "RunOutcome",
    "StreamJsonParser",
    "TextDelta",
    "ToolCallCompleted",
    "agent_environment",
    "build_argv",
    "build_prompt",
    "canonical_json",
    "decode_tool_output",
    "extract_from_text",
    "extract_from_tool_calls",
    "extract_modifications",
    "human_duration",
    "prompt_digest",
    "run_agent",
    "validate_servers",
]
