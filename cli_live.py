"""The CLI's part in live turns: `chatledger interrupt`, and the tool approvals of `send`.

`interrupt` works wherever the turn runs: it records `InterruptRequested` in the ledger and
the process that runs the turn (a backend, usually) stops it and records the RunFailed
(see actors/interrupts.py); the command waits for that record. `ApprovalPrompter` answers
the `permission_request` updates of a `send`: on a terminal it asks y/N, otherwise it
follows `--approve` / `--deny` (deny when neither is given). Registered on `cli.main` when
`cli` is imported (its last lines import this module).
"""

from __future__ import annotations

import getpass
import json
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from .actors.interrupts import request_interrupt, wait_for_end
from .actors.updates import PermissionRequestUpdate
from .cli import (
    State,
    _emit_json,
    _fail,
    json_option,
    main,
    one_line,
    pass_state,
    resolve_session_id,
)
from .events import ResponseReceived, RunFailed
from .storage import AuditStore

DEFAULT_INTERRUPT_WAIT = 10.0
"""How long `interrupt` waits, by default, for the process running the turn to stop it."""

INPUT_SHOWN = 300
"""At most this many characters of a tool's input in the y/N question."""


def stdin_is_terminal() -> bool:
    """Whether a person can answer questions on stdin."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):  # closed or replaced
        return False


def cli_user() -> str:
    """Who decides at this terminal, as recorded: `cli:<login name>`."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container): the uid will do
        name = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"cli:{name}"


def _why_not_stopped(log: AuditStore, session_id: str, turn: int, waited: float) -> str:
    """Why a turn asked to stop is still open: nobody runs it, or its process did not stop it."""
    lease = log.lease(session_id)
    if lease is None or not lease.held_at(log.clock()):
        return (f"turn {turn} of {session_id} is open but no process runs it (the one that did "
                "stopped); it is closed as interrupted when the session is next used")
    owner = lease.owner
    where = f"process {owner.pid} on {owner.host}" if owner is not None else "its process"
    return (f"turn {turn} of {session_id} did not stop within {waited:g} s: is {where} "
            "(which runs it) still working? The request stays recorded")


@main.command()
@click.argument("session_id")
@click.option("--wait", "wait_seconds", type=click.FloatRange(0, 3600),
              default=DEFAULT_INTERRUPT_WAIT, show_default=True,
              help="Seconds to wait for the turn to be recorded as stopped.")
@json_option
@pass_state
def interrupt(state: State, session_id: str, wait_seconds: float, as_json: bool) -> None:
    """Interrupt a session's running turn, in whichever process runs it.

    The request is recorded (InterruptRequested); the process running the turn stops it
    (a warm agent gets the control `interrupt` and lives on) and records it as cancelled,
    with the text it had streamed. Exits 1 if no turn is running, or if the turn was not
    recorded as stopped within --wait seconds. Queued messages still run afterwards.

    Example: chatledger interrupt 3f2a...
    """
    with state.log() as log:
        session_id = resolve_session_id(log, session_id)
        request = request_interrupt(log, session_id, cli_user())
        if request.turn is None or request.recorded is None:
            if as_json:
                _emit_json({"session_id": session_id, "turn": None, "outcome": "no_turn"})
            _fail(f"no turn is running in session {session_id}", 1)
        turn = request.turn
        ended = wait_for_end(log, session_id, turn, request.recorded.version, wait_seconds)
        if ended is None:
            if as_json:
                _emit_json({"session_id": session_id, "turn": turn, "outcome": "not_stopped"})
            _fail(_why_not_stopped(log, session_id, turn, wait_seconds), 1)
    event = ended.event
    if isinstance(event, ResponseReceived):
        outcome, said = "answered", "had already answered; nothing was interrupted"
    elif isinstance(event, RunFailed) and event.reason == "cancelled":
        outcome, said = "interrupted", "interrupted (recorded as cancelled)"
    else:
        reason = event.reason if isinstance(event, RunFailed) else "?"
        outcome, said = "failed", f"ended otherwise ({reason})"
    if as_json:
        _emit_json({"session_id": session_id, "turn": turn, "outcome": outcome,
                    "reason": getattr(event, "reason", None)})
    else:
        click.echo(f"{session_id}: turn {turn} {said}")


# -- tool approvals in `send` ---------------------------------------------------------------


Decide = Callable[[str, bool, str | None], object]
"""Answers one request: (request id, allow, message)."""


class ApprovalPrompter:
    """Answers a `send`'s tool requests on the thread that calls `serve` (the main one).

    `offer` is called with each request from the turn's update callback (any thread): it
    only queues it, so the agent's run never waits on a terminal. The policy is "ask" (a
    y/N question on stderr, the answer read from stdin), "approve" (`--approve`), "deny"
    (`--deny`) or "not_interactive" (no terminal and neither flag: deny).
    """

    DENIALS = {"ask": "denied at the terminal", "deny": "denied by `chatledger send --deny`",
               "not_interactive": "denied: `chatledger send` was not run on a terminal "
                                  "(--approve allows)"}

    def __init__(self, policy: str, decide: Decide,
                 confirm: Callable[[str], bool] | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.policy = policy
        self.decide = decide
        self.say = say or (lambda line: click.echo(line, err=True))
        self.confirm = confirm or (lambda question: click.confirm(question, default=False,
                                                                  err=True))
        self._requests: queue.SimpleQueue[PermissionRequestUpdate | None] = queue.SimpleQueue()

    @staticmethod
    def policy_for(approve: bool, deny: bool, interactive: bool) -> str:
        """The policy the flags and the terminal ask for."""
        if approve:
            return "approve"
        if deny:
            return "deny"
        return "ask" if interactive else "not_interactive"

    def offer(self, update: PermissionRequestUpdate) -> None:
        """Queue a request for `serve` (any thread)."""
        self._requests.put(update)

    def finish(self) -> None:
        """The turn ended: `serve` returns (any thread)."""
        self._requests.put(None)

    @staticmethod
    def described(update: PermissionRequestUpdate) -> str:
        """`TOOL with INPUT` (the input as JSON, cut short), on one line."""
        shown = json.dumps(update.input, ensure_ascii=False, default=str)
        if len(shown) > INPUT_SHOWN:
            shown = shown[:INPUT_SHOWN] + "..."
        return f"{one_line(update.tool)} with {one_line(shown)}"

    def question(self, update: PermissionRequestUpdate) -> str:
        """The y/N question for a request (click adds ` [y/N]`)."""
        return f"Allow {self.described(update)}?"

    def answer(self, update: PermissionRequestUpdate) -> bool:
        """Decide one request by the policy (asking on a terminal); whether it was allowed."""
        if self.policy == "ask":
            try:
                allow = self.confirm(self.question(update))
            except click.Abort:  # Ctrl-C or Ctrl-D at the question: deny, then stop (130)
                self.decide(update.request_id, False, "interrupted at the question")
                raise
        else:
            allow = self.policy == "approve"
        why = None if allow else self.DENIALS[self.policy]
        if self.policy != "ask":
            self.say(f"[permission] {self.described(update)}: "
                     f"{'allowed (--approve)' if allow else why}")
        self.decide(update.request_id, allow, why)
        return allow

    def serve(self, done: threading.Event) -> None:
        """Answer requests as they come until `finish` (call on the main thread)."""
        while not done.is_set():
            try:
                update = self._requests.get(timeout=0.5)
            except queue.Empty:
                continue
            if update is None:
                return
            self.answer(update)


def run_send_with_approvals(send: Callable[[Callable[[Any], None]], Any],
                            prompter: ApprovalPrompter,
                            show: Callable[[Any], None]) -> Any:
    """Run `send(on_update)` on a helper thread while this thread answers the turn's tool
    requests; the send's result (what it raised is raised here)."""
    done = threading.Event()
    box: list[Any] = []
    failure: list[BaseException] = []

    def on_update(update: Any) -> None:
        show(update)
        if isinstance(update, PermissionRequestUpdate):
            prompter.offer(update)

    def work() -> None:
        try:
            box.append(send(on_update))
        except BaseException as error:  # handed to the main thread
            failure.append(error)
        finally:
            done.set()
            prompter.finish()

    threading.Thread(target=work, name="chatledger-send", daemon=True).start()
    prompter.serve(done)
    done.wait()
    if failure:
        raise failure[0]
    return box[0]
