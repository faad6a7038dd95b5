"""The CLI commands that manage sessions as users and operators do: title, tag, archive, search.

Registered on `cli.main` when `cli` is imported (its last line imports this module); each
records its change through the ledger's runtime, like `mode` and `study` do. Output follows
`cli.py`: one line for people, the session's info with --json.
"""

from __future__ import annotations

import click
import msgspec

from .catalog.search import DEFAULT_HIT_LIMIT, SearchIndex
from .cli import State, _emit_json, json_option, main, pass_state
from .config import load_config
from .console import format_time, parse_moment, table
from .events import SessionInfo


def _print_labels(info: SessionInfo, as_json: bool) -> None:
    if as_json:
        _emit_json(info)
        return
    tags = " ".join(info.tags) or "(none)"
    archived = " (archived)" if info.archived else ""
    click.echo(f"{info.session_id}: title {info.title or '(none)'}; tags {tags}{archived}")


@main.command()
@click.argument("session_id")
@click.argument("title")
@json_option
@pass_state
def title(state: State, session_id: str, title: str, as_json: bool) -> None:
    """Set a session's title (an empty string clears it).

    Example: chatledger title 3f2a... "Beam sizing, second pass"
    """
    with state.ledger() as ledger:
        info = ledger.set_title(session_id, title)
    _print_labels(info, as_json)


@main.command(context_settings={"ignore_unknown_options": True,
                                "allow_interspersed_args": False})
@click.argument("session_id")
@click.argument("changes", nargs=-1, type=click.UNPROCESSED, required=True)
@json_option
@pass_state
def tag(state: State, session_id: str, changes: tuple[str, ...], as_json: bool) -> None:
    """Add (+name) and remove (-name) a session's tags.

    Example: chatledger tag 3f2a... +bug +urgent -triage
    """
    add: list[str] = []
    remove: list[str] = []
    # After the id every word is a change (so -name is never read as an option), except
    # a --json written at the end.
    if changes and changes[-1] == "--json":
        changes, as_json = changes[:-1], True
    for change in changes:
        if len(change) < 2 or change[0] not in "+-":
            raise click.BadParameter(
                f"{change!r}: write +name to add a tag, -name to remove one", param_hint="CHANGES"
            )
        (add if change[0] == "+" else remove).append(change[1:])
    with state.ledger() as ledger:
        info = ledger.tag(session_id, add, remove)
    _print_labels(info, as_json)


@main.command()
@click.argument("session_id")
@click.option("--undo", is_flag=True, help="Take the session out of the archive.")
@json_option
@pass_state
def archive(state: State, session_id: str, undo: bool, as_json: bool) -> None:
    """Archive a session (listings leave it out; `sessions --archived` shows it).

    Example: chatledger archive 3f2a... [--undo]
    """
    with state.ledger() as ledger:
        info = ledger.unarchive(session_id) if undo else ledger.archive(session_id)
    _print_labels(info, as_json)


@main.command()
@click.argument("text")
@click.option("--owner", help="Only sessions of this owner.")
@click.option("--since", help="Only what was said since a time (ISO) or for a duration (2h).")
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_HIT_LIMIT, show_default=True,
              help="At most this many hits.")
@click.option("--reindex", is_flag=True, help="Rebuild the search index from the log first.")
@json_option
@pass_state
def search(state: State, text: str, owner: str | None, since: str | None, limit: int,
           reindex: bool, as_json: bool) -> None:
    """Find messages and answers holding every word of TEXT, newest first.

    The side index (a SQLite file beside the ledger) catches up with the log first.
    Example: chatledger search "beam deflection" --owner alice --since 7d --json
    """
    try:
        since_moment = parse_moment(since) if since else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from None
    search_path = load_config(path=state.ledger_path).search_path
    with state.log() as log, SearchIndex(log, search_path) as index:
        if reindex:
            index.rebuild()
        hits = index.search(text, owner=owner, since=since_moment, limit=limit)
    if as_json:
        for hit in hits:
            click.echo(msgspec.json.encode(hit).decode())
        return
    rows = [(hit.session_id, hit.turn, hit.role, format_time(hit.recorded_at), hit.snippet)
            for hit in hits]
    click.echo(table(("session", "turn", "role", "time (UTC)", "text"), rows))
