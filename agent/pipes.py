"""What the run loop needs from the agent's three pipes, and which implementation serves them.

On POSIX one selector on the run's thread serves all three (`posix_pipes`); on Windows, where
selectors cannot wait on pipes, helper threads do (`windows_pipes`). Nothing here knows the
agent's protocol.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Protocol

PIPES_SELECTABLE = sys.platform != "win32"
"""Whether `selectors` can wait on pipes; where it cannot (Windows), helper threads serve them."""

class Pipes(Protocol):
    """What the run loop needs from the agent's three pipes, however they are served.

    Every method is called on the run's calling thread.
    """

    @property
    def end_of_output(self) -> bool:
        """Whether stdout has ended (the agent and everything it started closed it)."""

    @property
    def exit_wakes_us(self) -> bool:
        """Whether the agent's exit ends a `wait` early (else the loop polls for it)."""

    @property
    def cancel_wakes_us(self) -> bool:
        """Whether flipping the cancel switch ends a `wait` early (else the loop polls it)."""

    def start(self) -> None:
        """Begin serving the pipes: the prompt starts flowing to stdin."""

    def wait(self, timeout: float) -> list[bytes]:
        """Serve the pipes for at most `timeout` seconds; the stdout chunks read meanwhile."""

    def stderr_tail(self) -> bytes:
        """The last bytes the agent printed on stderr, once it is gone."""

    def close(self) -> None:
        """Stop serving the pipes and let go of every resource. Safe to call more than once."""




def open_pipes(
    process: subprocess.Popen[bytes], prompt: bytes | None, stderr_tail_bytes: int,
    cancel: threading.Event | None,
) -> Pipes:
    """The pipes of a started agent, served the way this platform allows (not started yet);
    with `prompt` None they leave stdin alone (the caller writes it)."""
    if PIPES_SELECTABLE:
        from .posix_pipes import SelectorPipes

        return SelectorPipes(process, prompt, stderr_tail_bytes, cancel)
    from .windows_pipes import ThreadedPipes

    return ThreadedPipes(process, prompt, stderr_tail_bytes, cancel)
