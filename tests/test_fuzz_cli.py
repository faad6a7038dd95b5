"""Hypothesis over CLI arguments and settings: whatever is typed, the answer is a documented
exit code and never a traceback; whatever a setting holds, it is taken or refused by name."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatledger.cli import EXIT_CODES, main
from chatledger.config import ENVIRONMENT_VARIABLES, load_config
from chatledger.errors import ConfigError
from chatledger.events import MessageSent, SessionCreated
from chatledger.storage import EventLog

STANDIN = f"{sys.executable} -m chatledger.agent.standin"
SESSION = "fuzzed-session"

# Commands that neither block (events --follow), run an agent (send, demo) nor write files
# at a path hypothesis makes up (compact, export -o).
COMMANDS = ["sessions", "show", "history", "events", "replay", "verify", "export", "expire",
            "stats", "import", "mode", "study", "new", "resume", "rebuild"]
OPTIONS = ["--json", "--mode", "--study", "--status", "--since", "--limit", "--from", "--type",
           "--at", "--head", "--idle", "--dry-run", "--format", "--id", "--ledger", "--color",
           "-h", "--", "-x", "--follow=no"]
TRICKY_VALUES = ["", " ", "-", "0", "-1", "1e400", "inf", "-inf", "nan", "NaN", "1e23",
                 str(2**64), str(-(2**63)), "99999999999d", "1h30m", "2h", "7d", "3.5w",
                 "2026-01-01", "2026-13-45", "1:ab", "0:" + "0" * 64, "user", "power", "idle",
                 "new", "expired", "jsonl", "html", SESSION, SESSION[:4], "fuzz", "../x",
                 "a\x00b", "é", "梁", "\udcff", "x" * 300, "--json", "-h"]


@pytest.fixture(scope="module")
def ledger() -> Iterator[Path]:
    """One small ledger the fuzzed commands read (and sometimes change)."""
    directory = Path(tempfile.mkdtemp(prefix="chatledger-fuzz-"))
    path = directory / "ledger"
    with EventLog(path) as log:
        log.append(SESSION, [SessionCreated(study_id="s"), MessageSent(turn=1, text="hi")], 0)
        log.append("fuzzed-other", [SessionCreated()], 0)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run the body in `path` (contextlib.chdir needs Python 3.11)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


argument = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(TRICKY_VALUES),
                     st.text(max_size=12))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(COMMANDS), arguments=st.lists(argument, max_size=5))
def test_no_cli_input_gives_a_traceback(ledger: Path, command: str, arguments: list[str]) -> None:
    if "--follow" in arguments or "-f" in arguments:
        arguments = [a for a in arguments if a not in ("--follow", "-f")]
    runner = CliRunner()
    # A `--ledger x` among the arguments names a ledger in a scratch directory, not here.
    with working_directory(ledger.parent):
        result = runner.invoke(
            main, ["--ledger", str(ledger), command, *arguments],
            env={"CHATLEDGER_AGENT_COMMAND": STANDIN, "CHATLEDGER_TIMEOUT": "30"},
        )
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception, result.output)
    assert result.exit_code in EXIT_CODES, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert len(result.output.strip().splitlines()) == 1, result.output


setting_text = st.one_of(st.sampled_from(TRICKY_VALUES), st.text(max_size=20),
                         st.floats().map(repr), st.integers().map(str))


@settings(max_examples=300, deadline=None)
@given(variable=st.sampled_from(sorted(ENVIRONMENT_VARIABLES)), value=setting_text)
def test_every_environment_setting_is_taken_or_refused_by_name(variable: str,
                                                               value: str) -> None:
    try:
        load_config(environ={variable: value, "CHATLEDGER_PATH": "/tmp/unused-ledger"})
    except ConfigError as error:
        assert variable in str(error) or ENVIRONMENT_VARIABLES[variable] in str(error), error


setting_value: Any = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5),
                                                               st.text(max_size=5), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(setting=st.sampled_from(sorted(set(ENVIRONMENT_VARIABLES.values()) | {"agent_env"})),
       value=setting_value)
def test_every_keyword_setting_is_taken_or_refused_by_name(setting: str, value: Any) -> None:
    try:
        load_config(environ={}, **{setting: value})
    except ConfigError as error:
        assert setting in str(error), error


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(setting=st.sampled_from(sorted(ENVIRONMENT_VARIABLES.values())),
       value=st.one_of(st.integers(), st.floats(), st.text(max_size=10), st.booleans()))
def test_every_toml_setting_is_taken_or_refused_naming_the_file(tmp_path: Path, setting: str,
                                                                 value: Any) -> None:
    toml = tmp_path / "chatledger.toml"
    if isinstance(value, str):
        literal = '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    elif isinstance(value, bool):
        literal = str(value).lower()
    elif isinstance(value, float) and value != value:
        literal = "nan"
    elif isinstance(value, float) and value in (float("inf"), float("-inf")):
        literal = "inf" if value > 0 else "-inf"
    else:
        literal = repr(value)
    toml.write_text(f"{setting} = {literal}\n", encoding="utf-8")
    try:
        load_config(environ={}, config_file=toml)
    except ConfigError as error:
        assert setting in str(error) or str(toml) in str(error), error
