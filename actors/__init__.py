"""Who acts: one SessionActor per live session, the Supervisor, the run pool, the runtime.

Actors never ask each other anything (tell only), and runs happen on the pool, never on an
actor's thread.
"""

from .messages import TurnSink
from .runs import RunPool
from .runtime import Runtime
from .session import SessionActor
from .supervisor import SessionRegistry, Supervisor

__all__ = ["RunPool", "Runtime", "SessionActor", "SessionRegistry", "Supervisor", "TurnSink"]
