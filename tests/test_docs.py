"""The README tells the truth about the CLI and the settings: every command is in its command
table, its exit-code table is the code's, and every setting's variable is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chatledger.cli import EXIT_CODES, main
from chatledger.config import ENVIRONMENT_VARIABLES, NUMERIC_RANGES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def table_rows(after_header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with `after_header`."""
    lines = README.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(after_header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


COMMAND_CELLS = [row[0] for row in table_rows("| command | what it does |")]


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_is_in_the_readme_command_table(command: str) -> None:
    assert any(re.search(rf"`{re.escape(command)}\b", cell) for cell in COMMAND_CELLS), command


def test_the_readme_command_table_names_no_command_that_does_not_exist() -> None:
    named = {match for cell in COMMAND_CELLS for match in re.findall(r"`([a-z]+)", cell)}
    assert named <= set(main.commands), named - set(main.commands)


def test_the_readme_exit_code_table_is_the_code_s() -> None:
    rows = table_rows("| exit code | meaning |")
    assert {int(code): meaning for code, meaning in rows} == EXIT_CODES


def test_the_group_help_lists_every_exit_code() -> None:
    assert main.help is not None
    for code in EXIT_CODES:
        assert re.search(rf"^\s+{code}  \S", main.help, re.MULTILINE), code


SETTING_ROWS = table_rows("| setting | environment variable | default | range |")


@pytest.mark.parametrize("variable", sorted(ENVIRONMENT_VARIABLES))
def test_every_environment_variable_is_in_the_settings_table(variable: str) -> None:
    assert any(f"`{variable}`" == row[1] for row in SETTING_ROWS), variable


@pytest.mark.parametrize("setting", sorted(NUMERIC_RANGES))
def test_every_numeric_setting_documents_its_range(setting: str) -> None:
    variable = next(name for name, field in ENVIRONMENT_VARIABLES.items() if field == setting)
    [row] = [row for row in SETTING_ROWS if row[1] == f"`{variable}`"]
    assert " to " in row[3], row
