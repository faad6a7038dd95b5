"""The CLI commands that manage sessions as users and operators do: title, tag, archive, search, budget.

Registered on `cli.main` when `cli` is imported (its last line imports this module); each
records its change through the ledger's runtime, like `mode` and `study` do. Output follows
`cli.py`: one line for people, the session's info with --json.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import msgspec

from .catalog.search import DEFAULT_HIT_LIMIT, SearchIndex
from .cli import State, _emit_json, json_option, main, pass_state
from .config import load_config
from .console import format_time, parse_moment, table
from .events import SessionInfo
from .reports import daily_figures, render_stats_html
from .spend import SpendReport, owner_budget, set_owner_budget
from .storage import AuditStore


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


@main.command()
@click.argument("session_id", required=False)
@click.option("--owner", help="Cap an owner's sessions together instead of one session.")
@click.option("--usd", type=click.FloatRange(min=0), help="The cap in USD.")
@click.option("--tokens", type=click.IntRange(min=0), help="The cap in tokens (cache included).")
@click.option("--clear", is_flag=True, help="Remove both caps.")
@json_option
@pass_state
def budget(state: State, session_id: str | None, owner: str | None, usd: float | None,
           tokens: int | None, clear: bool, as_json: bool) -> None:
    """Show or set a spend cap of a session or an owner (a cap not given is kept).

    A turn that would start with a cap reached is refused and recorded (TurnRefused);
    raise the cap and the session goes on. Example: chatledger budget --owner alice --usd 5
    """
    if (session_id is None) == (owner is None):
        raise click.UsageError("give a session id or --owner, not both")
    changing = clear or usd is not None or tokens is not None
    if owner is not None:
        with state.log() as log:
            current = owner_budget(log, owner)
            if changing:
                current = set_owner_budget(
                    log, owner, usd=None if clear else (usd if usd is not None else current.usd),
                    tokens=None if clear else (tokens if tokens is not None else current.tokens))
        if as_json:
            _emit_json(current)
            return
        click.echo(_budget_line(f"owner {owner}", current.usd, current.tokens,
                                current.spent_usd, current.spent_tokens))
        return
    assert session_id is not None
    with state.ledger() as ledger:
        info = ledger.runtime.log.require_info(session_id)
        if changing:
            info = ledger.set_budget(
                session_id, usd=None if clear else (usd if usd is not None else info.budget_usd),
                tokens=None if clear else (tokens if tokens is not None else info.budget_tokens))
    if as_json:
        _emit_json(info)
        return
    click.echo(_budget_line(session_id, info.budget_usd, info.budget_tokens,
                            info.total_cost_usd, info.total_tokens))


def _budget_line(who: str, usd: float | None, tokens: int | None, spent_usd: float,
                 spent_tokens: int) -> str:
    cap = " and ".join(part for part in (
        f"${usd:.4f}" if usd is not None else "", f"{tokens} tokens" if tokens is not None else ""
    ) if part) or "none"
    return f"{who}: spent ${spent_usd:.4f} and {spent_tokens} tokens; cap {cap}"


def spend_lines(report: SpendReport) -> str:
    """The `stats` tables of spend per owner, per day and per model."""
    header = ("answers", "cost $", "tokens", "refused")

    def rows(groups: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(key, spend.answers, f"{spend.usd:.4f}", spend.tokens, spend.refused)
                for key, spend in groups.items()]

    models = [(model, spend.answers, f"{spend.usd:.4f}", spend.input_tokens,
               spend.output_tokens, spend.cache_creation_input_tokens,
               spend.cache_read_input_tokens) for model, spend in report.by_model.items()]
    return "\n".join([
        "", "spend per owner", table(("owner", *header), rows(report.by_owner)),
        "", "spend per day (UTC)", table(("day", *header), rows(report.by_day)),
        "", "spend per model", table(("model", "answers", "cost $", "input", "output",
                                      "cache write", "cache read"), models),
    ])


def write_stats_html(log: AuditStore, html_file: str) -> None:
    """Write the operators' page of `stats --html` (one more pass over the log)."""
    page = render_stats_html(daily_figures(log.read_all()), ledger=log.location,
                             generated_at=datetime.now(timezone.utc))
    try:
        Path(html_file).write_text(page, encoding="utf-8")
    except OSError as error:
        raise click.FileError(html_file, hint=str(error)) from None
