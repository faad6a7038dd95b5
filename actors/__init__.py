"""Who acts: one SessionActor per live session, the Supervisor, the run pool, the runtime;
the pure decisions they act on (`turn`, `expiry`) and the typed updates a turn streams
(`updates`).

Actors never ask each other anything (tell only), and runs happen on the pool, never on an
actor's thread. The names below load on first use, so importing `actors.updates` or
`actors.expiry` (as the CLI does) does not start pykka or the agent runner.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runs import RunPool
    from .runtime import Runtime
    from .session import SessionActor
    from .supervisor import SessionRegistry, Supervisor
    from .updates import TurnSink

_LAZY = {
    "RunPool": "runs",
    "Runtime": "runtime",
    "SessionActor": "session",
    "SessionRegistry": "supervisor",
    "Supervisor": "supervisor",
    "TurnSink": "updates",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


__all__ = ["RunPool", "Runtime", "SessionActor", "SessionRegistry", "Supervisor", "TurnSink"]
