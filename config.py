"""chatledger's settings: one msgspec Struct, read from keyword arguments, then environment
variables, then an optional `chatledger.toml`, then defaults.

Every bad value gets a ConfigError naming the setting (and where it came from). This module
reads files and the environment only when `load_config` is called; it starts nothing.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from .errors import ConfigError

DEFAULT_ALLOWED_TOOLS = (
    "Read",
    "Write(**/STUDY_REPORT.md)",
    "Write(**/3_results/*.md)",
    "Bash(python:*)",
    "mcp__atomizer-tools__*",
)
HISTORY_STRATEGIES = ("prompt", "resume")
TRANSCRIPT_MIRROR_CHOICES = ("auto", "on", "off")


def default_ledger_path() -> str:
    """The platform's user data directory for chatledger's default ledger."""
    import platformdirs

    return str(Path(platformdirs.user_data_dir("chatledger", appauthor=False)) / "ledger")


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Every setting chatledger reads, with its default."""

    path: str = ""
    agent_command: tuple[str, ...] = ("claude",)
    agent_dialect: str = ""
    output_format: str = "stream-json"
    timeout: float = 300.0
    max_runs: int = 4
    mcp_config: str | None = None
    idle_timeout: float = 3600.0
    max_live_sessions: int = 1000
    expiry_age: float = 86400.0
    sweep_interval: float = 300.0
    history_window: int = 10
    history_strategy: str = "prompt"
    transcript_mirror: str = "auto"
    allowed_tools: tuple[str, ...] = DEFAULT_ALLOWED_TOOLS
    allow_power_mode: bool = True
    partial_messages: bool = True
    max_output_bytes: int = 64 * 1024 * 1024
    max_message_bytes: int = 16 * 1024 * 1024
    max_canvas_bytes: int = 16 * 1024 * 1024
    kill_grace: float = 2.0
    agent_cwd: str | None = None
    agent_env: dict[str, str] = msgspec.field(default_factory=dict)
    signing_key: str | None = None
    anchor_file: str | None = None
    anchor_interval: float = 300.0
    auto_title: bool = False
    search_path: str | None = None
    lease_ttl: float = 5.0
    turn_wait_timeout: float = 0.0
    warm_agents: bool = False
    max_warm_agents: int = 8
    warm_idle_timeout: float = 600.0
    tool_approvals: bool = False
    permission_timeout: float = 0.0
    spend_reserve_usd: float = 0.05
    spend_reserve_tokens: int = 20_000


ENVIRONMENT_VARIABLES: dict[str, str] = {
    "CHATLEDGER_PATH": "path",
    "CHATLEDGER_AGENT_COMMAND": "agent_command",
    "CHATLEDGER_AGENT_DIALECT": "agent_dialect",
    "CHATLEDGER_OUTPUT_FORMAT": "output_format",
    "CHATLEDGER_TIMEOUT": "timeout",
    "CHATLEDGER_MAX_RUNS": "max_runs",
    "CHATLEDGER_MCP_CONFIG": "mcp_config",
    "CHATLEDGER_IDLE_TIMEOUT": "idle_timeout",
    "CHATLEDGER_MAX_LIVE_SESSIONS": "max_live_sessions",
    "CHATLEDGER_EXPIRY_AGE": "expiry_age",
    "CHATLEDGER_SWEEP_INTERVAL": "sweep_interval",
    "CHATLEDGER_HISTORY_WINDOW": "history_window",
    "CHATLEDGER_HISTORY_STRATEGY": "history_strategy",
    "CHATLEDGER_TRANSCRIPT_MIRROR": "transcript_mirror",
    "CHATLEDGER_ALLOWED_TOOLS": "allowed_tools",
    "CHATLEDGER_ALLOW_POWER_MODE": "allow_power_mode",
    "CHATLEDGER_PARTIAL_MESSAGES": "partial_messages",
    "CHATLEDGER_MAX_OUTPUT_BYTES": "max_output_bytes",
    "CHATLEDGER_MAX_MESSAGE_BYTES": "max_message_bytes",
    "CHATLEDGER_MAX_CANVAS_BYTES": "max_canvas_bytes",
    "CHATLEDGER_KILL_GRACE": "kill_grace",
    "CHATLEDGER_AGENT_CWD": "agent_cwd",
    "CHATLEDGER_SIGNING_KEY": "signing_key",
    "CHATLEDGER_ANCHOR_FILE": "anchor_file",
    "CHATLEDGER_ANCHOR_INTERVAL": "anchor_interval",
    "CHATLEDGER_AUTO_TITLE": "auto_title",
    "CHATLEDGER_SEARCH_PATH": "search_path",
    "CHATLEDGER_LEASE_TTL": "lease_ttl",
    "CHATLEDGER_TURN_WAIT_TIMEOUT": "turn_wait_timeout",
    "CHATLEDGER_WARM_AGENTS": "warm_agents",
    "CHATLEDGER_MAX_WARM_AGENTS": "max_warm_agents",
    "CHATLEDGER_WARM_IDLE_TIMEOUT": "warm_idle_timeout",
    "CHATLEDGER_TOOL_APPROVALS": "tool_approvals",
    "CHATLEDGER_PERMISSION_TIMEOUT": "permission_timeout",
    "CHATLEDGER_SPEND_RESERVE_USD": "spend_reserve_usd",
    "CHATLEDGER_SPEND_RESERVE_TOKENS": "spend_reserve_tokens",
}
"""Environment variable -> setting."""

DAY = 86400.0
NUMERIC_RANGES: dict[str, tuple[float, float]] = {
    "timeout": (0.1, 7 * DAY),
    "idle_timeout": (0.01, 3650 * DAY),
    "expiry_age": (0.01, 36500 * DAY),
    "sweep_interval": (1.0, DAY),
    "kill_grace": (0.01, 600.0),
    "max_runs": (1, 1024),
    "max_live_sessions": (1, 10_000_000),
    "history_window": (0, 100_000),
    "max_output_bytes": (1024, 1 << 40),
    "max_message_bytes": (1024, 1 << 30),
    "max_canvas_bytes": (1024, 1 << 30),
    "anchor_interval": (0, DAY),
    "lease_ttl": (0.5, DAY),
    "turn_wait_timeout": (0, 365 * DAY),
    "max_warm_agents": (1, 10_000),
    "warm_idle_timeout": (0.01, 365 * DAY),
    "permission_timeout": (0, 365 * DAY),
    "spend_reserve_usd": (0, 1_000_000),
    "spend_reserve_tokens": (0, 10**12),
}
"""Each numeric setting's documented range (inclusive): a value outside it is refused."""

_SETTING_TO_VARIABLE = {setting: name for name, setting in ENVIRONMENT_VARIABLES.items()}


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, setting in ENVIRONMENT_VARIABLES.items():
        raw = environ.get(name)
        if raw is None:
            continue
        if setting == "agent_command" and not raw.strip():
            raise ConfigError(f"{name} is set but empty: name the agent's command line "
                              "(e.g. claude), or unset it for the default")
        if raw == "":
            continue
        if setting in ("agent_command", "allowed_tools"):
            try:
                values[setting] = tuple(shlex.split(raw))
            except ValueError as error:
                raise ConfigError(f"{name}: cannot split {raw!r}: {error}") from None
        elif setting in ("allow_power_mode", "partial_messages", "auto_title", "warm_agents",
                         "tool_approvals"):
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ConfigError(f"{name}: expected yes/no, true/false or 1/0, not {raw!r}")
            values[setting] = lowered in ("1", "true", "yes", "on")
        else:
            values[setting] = raw
    return values


def _from_toml(file: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {file}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{file} is not valid TOML: {error}") from None
    section = data.get("chatledger", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: [chatledger] must be a table")
    return {key.replace("-", "_"): value for key, value in section.items()}


def _source(setting: str, origin: dict[str, str]) -> str:
    where = origin.get(setting, "default")
    variable = _SETTING_TO_VARIABLE.get(setting)
    if where == "environment" and variable:
        return f"{variable} (setting {setting!r})"
    return f"setting {setting!r} (from {where})"


def load_config(
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Config:
    """Build the Config: keyword arguments win over environment variables, which win over
    `chatledger.toml` (`config_file`, else $CHATLEDGER_CONFIG, else ./chatledger.toml)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    file = config_file or environ.get("CHATLEDGER_CONFIG")
    toml_path = Path(file) if file else Path("chatledger.toml")
    if file and not _is_file(toml_path):
        raise ConfigError(f"config file {toml_path} does not exist")
    if _is_file(toml_path):
        for key, value in _from_toml(toml_path).items():
            values[key] = value
            origin[key] = str(toml_path)
    for key, value in _from_environment(environ).items():
        values[key] = value
        origin[key] = "environment"
    for key, value in overrides.items():
        if value is None and key not in ("mcp_config", "agent_cwd", "search_path"):
            continue
        if key in ("agent_command", "allowed_tools") and isinstance(value, str):
            try:
                value = tuple(shlex.split(value))
            except ValueError as error:
                raise ConfigError(
                    f"setting {key!r} (from keyword argument): cannot split {value!r}: {error}"
                ) from None
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        values[key] = value
        origin[key] = "keyword argument"
    for key, value in values.items():
        if not _is_valid_text(value):
            raise ConfigError(f"{_source(key, origin)}: holds bytes that are not valid UTF-8 "
                              "text; write it as text")
    try:
        config = msgspec.convert(values, Config, strict=False)
    except msgspec.ValidationError as error:
        message = str(error)
        setting = message.rsplit("$.", 1)[-1].rstrip("`").split("[")[0] if "$." in message else ""
        if "unknown field" in message.lower():
            raise ConfigError(f"unknown setting: {message}") from None
        where = _source(setting, origin) if setting else "configuration"
        raise ConfigError(f"{where}: {message}") from None
    _check(config, origin)
    if not config.path:
        config = msgspec.structs.replace(config, path=default_ledger_path())
    return config


def _is_file(path: Path) -> bool:
    """Whether `path` is a file; a name the system cannot even look up is not."""
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def _is_valid_text(value: Any) -> bool:
    """False if a string in `value` holds lone surrogates (undecodable environment bytes)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_valid_text(item) for item in value)
    if isinstance(value, dict):
        return all(_is_valid_text(k) and _is_valid_text(v) for k, v in value.items())
    return True


def _check(config: Config, origin: dict[str, str]) -> None:
    """Range and choice checks msgspec's types cannot express."""

    def fail(setting: str, problem: str) -> NoReturn:
        raise ConfigError(f"{_source(setting, origin)}: {problem}")

    if not config.agent_command:
        fail("agent_command", "must name a command")
    from .agent.dialects import dialect_names, select_dialect

    try:
        dialect = select_dialect(config.agent_dialect, config.agent_command)
    except ValueError:
        fail("agent_dialect", f"must be one of {', '.join(dialect_names())}, or empty to "
             "infer it from the agent command")
    if config.output_format not in dialect.output_formats:
        fail("output_format", f"must be one of {', '.join(dialect.output_formats)}")
    if config.history_strategy not in HISTORY_STRATEGIES:
        fail("history_strategy", f"must be one of {', '.join(HISTORY_STRATEGIES)}")
    if config.transcript_mirror not in TRANSCRIPT_MIRROR_CHOICES:
        fail("transcript_mirror", f"must be one of {', '.join(TRANSCRIPT_MIRROR_CHOICES)}")
    for setting, (low, high) in NUMERIC_RANGES.items():
        value = getattr(config, setting)
        if not (math.isfinite(value) and low <= value <= high):
            fail(setting, f"{value!r} is out of range: give a number between {low:g} and "
                          f"{high:g}")
    if config.mcp_config is not None and not _is_file(Path(config.mcp_config)):
        fail("mcp_config", f"{config.mcp_config} is not a file")
