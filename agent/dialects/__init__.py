"""The registry of agent dialects, by name, and how the settings choose one.

`agent_dialect` names a dialect; left empty, it is inferred from the agent command (the
stand-in's module name means the stand-in, anything else claude, as before dialects
existed). To add an agent CLI, write one module in this package and add one line to
`DIALECTS` (see `standin.py`). This module starts nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from ..dialect import AgentDialect
from .claude import CLAUDE
from .standin import STANDIN, runs_standin

DIALECTS: dict[str, AgentDialect] = {
    CLAUDE.name: CLAUDE,
    STANDIN.name: STANDIN,
}
"""Every dialect, by its registered name."""

DEFAULT_DIALECT = CLAUDE.name


def dialect_names() -> tuple[str, ...]:
    """The registered dialect names, sorted."""
    return tuple(sorted(DIALECTS))


def get_dialect(name: str) -> AgentDialect:
    """The dialect registered as `name`; ValueError naming the known ones otherwise."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown agent dialect {name!r}: expected one of "
                         f"{', '.join(dialect_names())}") from None


def select_dialect(name: str, command: Sequence[str]) -> AgentDialect:
    """The dialect for these settings: `name` when given, else inferred from `command`;
    ValueError for an unknown name."""
    if name:
        return get_dialect(name)
    return _inferred(tuple(command))


@functools.lru_cache(maxsize=64)
def _inferred(command: tuple[str, ...]) -> AgentDialect:
    return STANDIN if runs_standin(command) else CLAUDE
