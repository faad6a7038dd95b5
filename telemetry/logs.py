"""Log records that say which session and turn they are about.

`session_logger` wraps a module's logger in an adapter that puts `session_id` and `turn` on
every record (as `extra`), so a host's handler or formatter can use `%(session_id)s` and
`%(turn)s`. Never configures handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter is subscriptable at run time from Python 3.11 on
    _Adapter = logging.LoggerAdapter


class SessionLogAdapter(_Adapter):
    """A logger adapter adding the session id and its current turn (None between turns)."""

    def __init__(self, logger: logging.Logger, session_id: str,
                 turn: Callable[[], int | None]) -> None:
        super().__init__(logger, {"session_id": session_id})
        self.session_id = session_id
        self.turn = turn

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Put `session_id` and `turn` into the record's extra (a caller's own extra wins)."""
        extra = {"session_id": self.session_id, "turn": self.turn(), **kwargs.get("extra", {})}
        kwargs["extra"] = extra
        return msg, kwargs


def session_logger(logger: logging.Logger, session_id: str,
                   turn: Callable[[], int | None]) -> SessionLogAdapter:
    """`logger`, with the session and its current turn (asked of `turn`) on each record."""
    return SessionLogAdapter(logger, session_id, turn)
