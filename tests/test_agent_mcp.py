"""The private MCP config files: 0600 in a 0700 directory, per session and mode, in the
dialect's shape."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from chatledger.agent import McpConfigError, McpConfigFiles

SERVERS = {"atomizer-tools": {"command": "python", "args": ["-m", "atomizer.mcp"],
                              "env": {"TOKEN": "secret"}}}


# -- MCP config files ---------------------------------------------------------------------


def test_mcp_files_are_0600_in_a_0700_directory_and_hold_the_servers(tmp_path: Path) -> None:
    directory = tmp_path / "ledger" / "mcp"
    files = McpConfigFiles(directory)
    assert not directory.exists()  # nothing is created before it is needed
    path = Path(files.path_for("session-1", "user", SERVERS))
    assert path.parent == directory
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {"mcpServers": SERVERS}
    assert [p.name for p in directory.iterdir()] == [path.name]  # no temporary left behind


def test_one_file_per_session_and_mode_and_removal_is_per_session(tmp_path: Path) -> None:
    files = McpConfigFiles(tmp_path / "mcp")
    user = files.path_for("s-1", "user", SERVERS)
    power = files.path_for("s-1", "power", SERVERS)
    other = files.path_for("../../etc/passwd", "user", SERVERS)
    assert len({user, power, other}) == 3
    assert all(Path(p).parent == tmp_path / "mcp" for p in (user, power, other))
    assert files.path_for("s-1", "user", SERVERS) == user
    files.remove_session("s-1")
    assert not Path(user).exists() and not Path(power).exists() and Path(other).exists()
    files.remove_session("never-written")  # nothing to remove is fine
    files.remove_all()
    assert list((tmp_path / "mcp").iterdir()) == []


def test_a_changed_server_list_rewrites_the_file(tmp_path: Path) -> None:
    files = McpConfigFiles(tmp_path / "mcp")
    path = files.path_for("s", "user", SERVERS)
    changed = {"other": {"url": "http://127.0.0.1:9/mcp", "type": "http"}}
    assert files.path_for("s", "user", changed) == path
    assert json.loads(Path(path).read_text()) == {"mcpServers": changed}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_an_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "mcp"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    McpConfigFiles(directory).path_for("s", "user", SERVERS)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_the_working_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(McpConfigError, match="working directory"):
        McpConfigFiles(".").path_for("s", "user", SERVERS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("servers", "problem"),
    [
        ({"mcpServers": {"x": {"command": "y"}}}, "server 'mcpServers'.*needs a \"command\""),
        ([("x", {})], "must be a mapping"),
        ({"x": "python"}, "settings must be a mapping"),
        ({"x": {"command": ""}}, "\"command\" must be a non-empty string"),
        ({"x": {"command": "p", "args": "-m x"}}, "\"args\" must be a list of strings"),
        ({"x": {"command": "p", "env": {"A": 1}}}, "\"env\" must map strings to strings"),
        ({"x": {"args": []}}, "needs a \"command\""),
        ({"": {"command": "p"}}, "non-empty string"),
    ],
)
def test_bad_server_shapes_get_a_clear_error(
    tmp_path: Path, servers: object, problem: str
) -> None:
    with pytest.raises(McpConfigError, match=problem):
        McpConfigFiles(tmp_path / "mcp").path_for("s", "user", servers)  # type: ignore[arg-type]
