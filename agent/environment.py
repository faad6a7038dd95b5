"""The agent's environment: ours (or a given base), the configured extras, the dialect's
defaults, and a cache that spares rebuilding it for every run while ours is unchanged.

Copying os.environ and encoding it again for every run took about 900 Python calls, ~5% of
chatledger's CPU per turn. CPython keeps the encoded environment in `os.environ._data`
(every change to os.environ goes through it), so one C-level comparison with the copy taken
at the last build tells whether to build again; where that dict does not exist, the
environment is built for every run. On POSIX the agent gets it as bytes, which `subprocess`
passes on without encoding each variable again. This module starts nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any


def agent_environment(
    base: Mapping[str, str] | None, defaults: Mapping[str, str],
    extras: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`base` (default: ours) plus `extras`, plus each of `defaults` not already set."""
    environment = dict(os.environ if base is None else base)
    if extras:
        environment.update(extras)
    for name, value in defaults.items():
        environment.setdefault(name, value)
    return environment


class InheritedEnvironment:
    """The agent's environment when it inherits ours, built once and reused until ours (or
    the dialect's defaults) change. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: dict[Any, Any] | None = None
        self._defaults: Mapping[str, str] | None = None
        self._built: tuple[dict[str, str], Mapping[Any, Any]] | None = None

    def get(self, defaults: Mapping[str, str]) -> tuple[dict[str, str], Mapping[Any, Any]]:
        """(the environment as text, for messages; the same, for spawning)."""
        source = getattr(os.environ, "_data", None)
        if not isinstance(source, dict):
            environment = agent_environment(None, defaults)
            return environment, environment
        with self._lock:
            if self._built is None or self._defaults != defaults or self._source != source:
                # The copy comes first: a change made meanwhile by another thread then
                # differs from it next time, rather than hiding behind a stale build.
                self._source, self._defaults = dict(source), dict(defaults)
                environment = agent_environment(None, defaults)
                spawned: Mapping[Any, Any] = environment
                if os.supports_bytes_environ:
                    spawned = {os.fsencode(key): os.fsencode(value)
                               for key, value in environment.items()}
                self._built = (environment, spawned)
            return self._built


INHERITED_ENVIRONMENT = InheritedEnvironment()
"""The one cache of this process."""
