"""Private MCP config files for the agent: one file per session and mode, in the shape the
agent's dialect gives it (claude's is `{"mcpServers": {...}}`).

The files hold server commands and environments (often secrets), so they live in a private
directory (0700) as files with mode 0600, created exclusively (O_CREAT | O_EXCL) and renamed
into place, so the agent never reads a half-written file. They are never written into the
working directory. Each file names the process that wrote it, so a process removes only its
own files (a CLI closing beside a backend never deletes a file the backend's agent is about
to read) and those of processes that died without cleaning up (a SIGKILLed backend must not
leave secrets behind). The directory is created on first use, not when this object is made,
so a read-only ledger can still be opened. This module starts no processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ChatledgerError
from .dialects.claude import claude_mcp_config_document

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


class McpConfigError(ChatledgerError, ValueError):
    """The MCP servers given are not a valid `mcpServers` mapping; the message says what is wrong."""


def validate_servers(servers: Any) -> dict[str, dict[str, Any]]:
    """Check the shape of an `mcpServers` mapping (name -> server); return a plain copy.

    A server is either a local command (`command`: str, optional `args`: list of str, optional
    `env`: str -> str) or a remote one (`url`: str, optional `type` and `headers`).
    """
    if not isinstance(servers, Mapping):
        raise McpConfigError(
            f"MCP servers must be a mapping of server name -> server settings, not "
            f"{type(servers).__name__} (pass the value of \"mcpServers\", not the whole file)"
        )
    checked: dict[str, dict[str, Any]] = {}
    for name, server in servers.items():
        where = f"MCP server {name!r}"
        if not isinstance(name, str) or not name.strip():
            raise McpConfigError(f"{where}: a server name must be a non-empty string")
        if not isinstance(server, Mapping):
            raise McpConfigError(f"{where}: settings must be a mapping, not {type(server).__name__}")
        if "command" in server:
            if not isinstance(server["command"], str) or not server["command"]:
                raise McpConfigError(f"{where}: \"command\" must be a non-empty string")
            args = server.get("args", [])
            if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
                raise McpConfigError(f"{where}: \"args\" must be a list of strings")
            environment = server.get("env", {})
            if not isinstance(environment, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in environment.items()
            ):
                raise McpConfigError(f"{where}: \"env\" must map strings to strings")
        elif "url" in server:
            if not isinstance(server["url"], str) or not server["url"]:
                raise McpConfigError(f"{where}: \"url\" must be a non-empty string")
        else:
            raise McpConfigError(
                f"{where}: needs a \"command\" (a local server) or a \"url\" (a remote one)"
            )
        try:
            checked[name] = json.loads(json.dumps(dict(server)))
        except (TypeError, ValueError) as error:
            raise McpConfigError(f"{where}: settings must be JSON-serialisable ({error})") from None
    return checked


def _process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this host)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # PermissionError: it exists, it is someone else's
        return True
    return True


def _writer_pid(path: Path) -> int | None:
    """The pid in a config file's name (`key.mode.PID.json`, or a temporary file beside it:
    `.key.mode.PID.json.PID.THREAD.tmp`); None for any other name."""
    parts = path.name.lstrip(".").split(".")
    if len(parts) >= 4 and parts[2].isdigit():
        return int(parts[2])
    return None


def _session_key(session_id: str) -> str:
    """A file-name-safe, fixed-length key for any session id (ids may hold path characters)."""
    return hashlib.sha256(session_id.encode("utf-8", errors="surrogatepass")).hexdigest()[:32]


class McpConfigFiles:
    """Writes and removes the agent's MCP config files in one private directory. Thread-safe."""

    def __init__(
        self, directory: str | os.PathLike[str],
        document: Callable[[Mapping[str, Any]], dict[str, Any]] = claude_mcp_config_document,
    ) -> None:
        """`document` turns validated servers into the file's content (the dialect's
        `mcp_config_document`; claude's by default)."""
        self.directory = Path(directory)
        self._document = document
        self._lock = threading.Lock()

    def _ensure_directory(self) -> None:
        """Create the private directory (0700) or tighten an existing one; refuse a symlink."""
        if self.directory.resolve() == Path.cwd().resolve():
            raise McpConfigError(
                f"{self.directory} is the working directory: MCP config files must live in a "
                "private directory of their own"
            )
        try:
            self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            info = os.lstat(self.directory)
        except OSError as error:
            raise McpConfigError(
                f"cannot create the private MCP config directory {self.directory}: {error}"
            ) from None
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise McpConfigError(f"{self.directory} must be a real directory, not a link or file")
        if os.name == "posix" and stat.S_IMODE(info.st_mode) != DIRECTORY_MODE:
            os.chmod(self.directory, DIRECTORY_MODE)

    def path_for(self, session_id: str, mode: str, servers: Mapping[str, Any]) -> str:
        """The config file for this session and mode, written (0600) if missing or changed."""
        if not isinstance(mode, str) or not mode.isalnum():
            raise McpConfigError(f"mode must be a plain word, not {mode!r}")
        document = json.dumps(self._document(validate_servers(servers)), indent=2, sort_keys=True)
        content = (document + "\n").encode("utf-8")
        path = self.directory / f"{_session_key(session_id)}.{mode}.{os.getpid()}.json"
        with self._lock:
            self._ensure_directory()
            try:
                if path.read_bytes() == content:
                    return str(path)
            except OSError:
                pass
            self._write_exclusively(path, content)
        return str(path)

    def _write_exclusively(self, path: Path, content: bytes) -> None:
        """Create a fresh 0600 file beside `path` with O_EXCL, then rename it into place."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            descriptor = os.open(temporary, flags, FILE_MODE)
        except FileExistsError:  # a leftover of a crashed writer with our pid and thread id
            temporary.unlink()
            descriptor = os.open(temporary, flags, FILE_MODE)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def remove_session(self, session_id: str) -> None:
        """Remove this process's config files of one session (all modes), and any a dead
        process left; missing files are fine."""
        prefix = f"{_session_key(session_id)}."
        with self._lock:
            for path in self._removable():
                if path.name.lstrip(".").startswith(prefix):
                    path.unlink(missing_ok=True)

    def remove_all(self) -> None:
        """Remove every config file of this process and of processes that died (the
        directory itself stays; files of other live processes stay too)."""
        with self._lock:
            for path in self._removable():
                path.unlink(missing_ok=True)

    def _removable(self) -> list[Path]:
        """Files written by this process or by one that is no longer alive."""
        removable = []
        for path in self._files():
            pid = _writer_pid(path)
            if pid is None or pid == os.getpid() or not _process_alive(pid):
                removable.append(path)
        return removable

    def _files(self) -> list[Path]:
        try:
            return [
                path for path in self.directory.iterdir()
                if path.name.endswith(".json") or path.name.endswith(".tmp")
            ]
        except OSError:  # no directory yet (nothing was written) or it is gone
            return []
