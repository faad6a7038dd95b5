"""Drives the real `claude` binary in tests: finds (or installs) it, and gives each test a
scratch HOME and working directory, the environment that points claude at a fake Messages
API, an MCP config for the test canvas server, and chatledger settings that use all of it.

The binary is looked up in `$CHATLEDGER_CLAUDE_BIN`, then in the npm cache `.ci/run`
installs into (`${CHATLEDGER_NPM_CACHE:-~/.cache/chatledger-npm}/node_modules/.bin/claude`),
then on PATH. If it is nowhere and npm exists, `require_claude` installs it into that cache
once (bounded in time). Tests skip, with the reason, only when neither claude nor npm is
there (or the install fails outside CI). Everything this module starts is bounded by a
timeout, and `ClaudeHarness.kill_leftovers` ends any process still using a test's HOME.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fake_anthropic import FakeAnthropic

from chatledger.config import Config, load_config

NPM_PACKAGE = "@anthropic-ai/claude-code"
INSTALL_TIMEOUT_SECONDS = 300.0
CANVAS_SERVER = Path(__file__).resolve().parent / "canvas_mcp_server.py"
MCP_SERVER_NAME = "atomizer-tools"
"""The production server name: chatledger's default allow-list already has `mcp__atomizer-tools__*`."""
CANVAS_TOOL = f"mcp__{MCP_SERVER_NAME}__apply_canvas_change"

MAX_RETRIES = "1"
"""`CLAUDE_CODE_MAX_RETRIES` in tests: one retry (about half a second of backoff)."""

CLEARED_VARIABLES = (
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "ANTHROPIC_CUSTOM_HEADERS",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_USE_FOUNDRY",
    "CLAUDE_CONFIG_DIR",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_ENTRYPOINT",
    "CLAUDECODE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
)
"""Variables of the outer environment that would send claude elsewhere than the fake API
(or change how it behaves); tests remove them from the child's environment."""


def npm_cache() -> Path:
    """Where `.ci/run` installs the npm package: $CHATLEDGER_NPM_CACHE or ~/.cache/chatledger-npm."""
    configured = os.environ.get("CHATLEDGER_NPM_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "chatledger-npm"


def find_claude() -> str | None:
    """The claude binary: $CHATLEDGER_CLAUDE_BIN, the npm cache, then PATH (None if absent)."""
    configured = os.environ.get("CHATLEDGER_CLAUDE_BIN")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    cached = npm_cache() / "node_modules" / ".bin" / ("claude.cmd" if os.name == "nt" else "claude")
    if os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("claude")


def install_claude() -> tuple[str | None, str]:
    """Install the npm package into the cache; (binary or None, why not). Bounded in time."""
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not installed, so the real claude CLI cannot be installed"
    command = [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix",
               str(npm_cache()), NPM_PACKAGE]
    try:
        finished = subprocess.run(command, capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"`{' '.join(command)}` failed: {error}"
    found = find_claude()
    if finished.returncode != 0 or found is None:
        tail = (finished.stderr or finished.stdout or "").strip()[-500:]
        return None, f"`{' '.join(command)}` exited {finished.returncode}: {tail}"
    return found, ""


_REQUIRED: tuple[str | None, str] | None = None


def require_claude(skip: Callable[[str], Any], fail: Callable[[str], Any]) -> str:
    """The claude binary, installed if need be; else `skip(reason)` (or `fail` in CI)."""
    global _REQUIRED
    if _REQUIRED is None:
        found = find_claude()
        configured = os.environ.get("CHATLEDGER_CLAUDE_BIN")
        if found:
            _REQUIRED = (found, "")
        elif configured:  # asked for a particular binary: never install another one
            _REQUIRED = (None, f"CHATLEDGER_CLAUDE_BIN={configured} is not an executable file")
        else:
            _REQUIRED = install_claude()
    binary, why = _REQUIRED
    if binary is not None:
        return binary
    if shutil.which("npm") is not None and os.environ.get("CI"):
        fail(f"the real claude CLI is required in CI: {why}")
    skip(f"real claude CLI unavailable: {why}")
    raise AssertionError("skip() returned")


def clean_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: ours) without the variables that would redirect claude."""
    environment = dict(os.environ if base is None else base)
    for name in CLEARED_VARIABLES:
        environment.pop(name, None)
    return environment


def claude_variables(base_url: str, home: Path) -> dict[str, str]:
    """The variables that point claude at a fake API, quietly, in a scratch HOME."""
    return {
        "HOME": str(home),
        "USERPROFILE": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-ant-test-dummy-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "IS_SANDBOX": "1",  # tests run as root in CI: --dangerously-skip-permissions needs it
        "CLAUDE_CODE_MAX_RETRIES": MAX_RETRIES,
        "API_TIMEOUT_MS": "30000",
        "MCP_CONNECT_TIMEOUT_MS": "10000",
        "NO_PROXY": "127.0.0.1,localhost",
    }


@dataclass
class ClaudeHarness:
    """One test's world for the real claude: binary, fake API, scratch HOME and cwd."""

    binary: str
    fake: FakeAnthropic
    root: Path

    def __post_init__(self) -> None:
        self.home = self.root / "home"
        self.workdir = self.root / "work"
        self.mcp_log = self.root / "mcp-calls.jsonl"
        for directory in (self.home, self.workdir):
            directory.mkdir(parents=True, exist_ok=True)

    def variables(self) -> dict[str, str]:
        """The variables claude needs (for chatledger's `agent_env`)."""
        return claude_variables(self.fake.base_url, self.home)

    def environment(self) -> dict[str, str]:
        """A whole environment for a claude child (or a chatledger subprocess)."""
        environment = clean_environment()
        environment.update(self.variables())
        return environment

    def mcp_config_file(self, *, always_load: bool = True, start_delay: float = 0.0) -> Path:
        """Write an MCP config naming the test canvas server as `atomizer-tools`."""
        server: dict[str, Any] = {
            "command": sys.executable,
            "args": [str(CANVAS_SERVER)],
            "env": {"CANVAS_MCP_LOG": str(self.mcp_log),
                    "CANVAS_MCP_START_DELAY": str(start_delay)},
        }
        if always_load:
            server["alwaysLoad"] = True
        path = self.root / "mcp.json"
        path.write_text(json.dumps({"mcpServers": {MCP_SERVER_NAME: server}}, indent=2))
        return path

    def mcp_calls(self) -> list[dict[str, Any]]:
        """The tools/call requests the canvas server received."""
        if not self.mcp_log.exists():
            return []
        return [json.loads(line) for line in self.mcp_log.read_text().splitlines() if line]

    def config(
        self, ledger_path: Path, *, mcp: bool = False, mcp_start_delay: float = 0.0,
        **overrides: Any,
    ) -> Config:
        """chatledger settings that run this claude against the fake API (no outer config);
        with `mcp`, the canvas server (started `mcp_start_delay` seconds late) is configured."""
        settings: dict[str, Any] = {
            "path": str(ledger_path),
            "agent_command": (self.binary,),
            "agent_cwd": str(self.workdir),
            "agent_env": self.variables(),
            "timeout": 60.0,
            "kill_grace": 1.0,
            "mcp_config": str(self.mcp_config_file(start_delay=mcp_start_delay)) if mcp else None,
        }
        settings.update(overrides)
        return load_config(config_file=None, environ={}, **settings)

    def transcripts(self) -> list[Path]:
        """claude's own session transcripts under the scratch HOME."""
        return sorted((self.home / ".claude" / "projects").glob("*/*.jsonl"))

    def run_bare(self, prompt: str, *args: str, timeout: float = 60.0
                 ) -> subprocess.CompletedProcess[bytes]:
        """Run claude once, without chatledger, the way chatledger would (for comparisons)."""
        argv = [self.binary, "--print", "--output-format", "stream-json", "--verbose", *args]
        return subprocess.run(argv, input=prompt.encode(), capture_output=True, timeout=timeout,
                              env=self.environment(), cwd=self.workdir, check=False)

    # -- processes ----------------------------------------------------------------------------

    def processes(self) -> list[int]:
        """Live processes (not zombies) whose environment has this harness's HOME (Linux only)."""
        marker = f"HOME={self.home}".encode()
        found: list[int] = []
        proc = Path("/proc")
        if not proc.is_dir():
            return found
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z" and marker in environ.split(b"\0"):
                found.append(int(entry.name))
        return found

    def agent_groups(self) -> set[int]:
        """The process groups of claude processes running with this HOME (Linux only): one
        per agent process, as claude briefly forks children of its own binary in its group."""
        binary = os.path.realpath(self.binary)
        marker = f"HOME={self.home}".encode()
        groups: set[int] = set()
        proc = Path("/proc")
        if not proc.is_dir():
            return groups
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "exe") != binary:  # cheap: most processes stop here
                    continue
                state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
                environ = (entry / "environ").read_bytes()
            except (OSError, ValueError):
                continue
            if state != "Z" and marker in environ.split(b"\0"):
                groups.add(int(group))
        return groups

    def kill_leftovers(self) -> list[int]:
        """SIGKILL whatever still runs with this HOME; return the pids (should be none)."""
        leftovers = self.processes()
        for pid in leftovers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return leftovers


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy or `timeout` passes; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
