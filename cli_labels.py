"""How the CLI shows a session's labels (owner, title, tags, archive, spend caps): only those
that are set, so a session without any prints as it always did. No I/O."""

from __future__ import annotations

from typing import Any

from .events import SessionInfo


def label_pairs(info: SessionInfo) -> list[tuple[str, Any]]:
    """The `show` lines for the labels a session has."""
    pairs: list[tuple[str, Any]] = []
    if info.owner is not None:
        pairs.append(("owner", info.owner))
    if info.title is not None:
        pairs.append(("title", info.title))
    if info.tags:
        pairs.append(("tags", " ".join(info.tags)))
    if info.archived:
        pairs.append(("archived", "yes"))
    if info.total_tokens:
        pairs.append(("tokens", info.total_tokens))
    if info.budget_usd is not None:
        pairs.append(("cap", f"${info.budget_usd:.4f}"))
    if info.budget_tokens is not None:
        pairs.append(("token cap", info.budget_tokens))
    if info.refused_count:
        pairs.append(("refused turns", info.refused_count))
    return pairs
