"""The `redact` command: remove what was said in one event, or in a whole session, for good.

Registered on `cli.main` when `cli` is imported (its last lines import this module). The
content and its salt leave the record, its commitment stays, so every hash chain still
verifies; a Redacted event records who asked, when and why. Output follows `cli.py`: one
line per redacted record for people, the Redacted records as JSON lines with --json.
"""

from __future__ import annotations

import getpass

import click

from .audit.records import record_to_json
from .cli import LARGEST_COUNT, State, _emit_json, json_option, main, pass_state, resolve_session_id
from .events import Redacted


def _who() -> str | None:
    """The operating-system user running the command (recorded when --by is not given)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


@main.command()
@click.argument("session_id")
@click.option("--version", "version", type=click.IntRange(1, LARGEST_COUNT),
              help="The version of the event whose content goes.")
@click.option("--all", "everything", is_flag=True,
              help="Erase the content of every event of the session.")
@click.option("--reason", default="", help="Why (recorded in the Redacted event).")
@click.option("--by", "redacted_by", default=None,
              help="Who asks (recorded as given; default: the operating-system user).")
@json_option
@pass_state
def redact(state: State, session_id: str, version: int | None, everything: bool, reason: str,
           redacted_by: str | None, as_json: bool) -> None:
    """Remove the content of one event (--version V) or of a whole session (--all).

    The record keeps its commitment, so `verify` stays clean and reports it as redacted;
    a Redacted event records who, when and why. Records written before the redaction-ready
    format cannot be redacted (exit 2).

    Example: chatledger redact 3f2a... --version 5 --reason "personal data"
    """
    if (version is None) == (not everything):
        raise click.UsageError("give either --version V or --all")
    with state.ledger() as ledger:
        session_id = resolve_session_id(ledger.log, session_id)
        written = ledger.redact(session_id, None if everything else version, reason=reason,
                                redacted_by=redacted_by if redacted_by is not None else _who())
    if as_json:
        for recorded in written:
            _emit_json(record_to_json(recorded))
        return
    if not written:
        click.echo(f"{session_id}: nothing left to redact")
    for recorded in written:
        event = recorded.event
        assert isinstance(event, Redacted)
        click.echo(f"{session_id}: version {event.version} ({event.event_type}) redacted, "
                   f"recorded at version {recorded.version}")
