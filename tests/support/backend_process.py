"""A backend process for the concurrency tests: the async SessionManager under load.

Usage: python backend_process.py LEDGER SHARED_SESSION RESULT_FILE ROUNDS

It creates three sessions of its own and runs ROUNDS stand-in turns in each, runs ROUNDS
turns in SHARED_SESSION (which other processes write to at the same time), and sets that
session's study 6 * ROUNDS times to `backend-N`, retrying a set the other writers raced
(ConcurrencyError) until it is acknowledged. Prints `ready` once its sessions exist, and
writes what it saw acknowledged to RESULT_FILE as JSON when done.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

from testkit import STANDIN

from chatledger import ConcurrencyError, SessionManager

MAX_SET_ATTEMPTS = 50


async def run_turns(manager: SessionManager, session_id: str, rounds: int,
                    result: dict[str, Any]) -> None:
    """Run `rounds` turns one after another; note which were answered."""
    for number in range(rounds):
        text = f"{session_id} turn {number} [[slow 0.02]]"
        items = [item async for item in manager.send_message(session_id, text)]
        errors = [item["message"] for item in items if item["type"] == "error"]
        if items and items[-1]["type"] == "done" and not errors:
            result["turns"].append(text)
        else:
            result["turn_errors"].append(f"{text}: {errors}")


async def set_studies(manager: SessionManager, session_id: str, count: int,
                      result: dict[str, Any]) -> None:
    """Set the study `count` times, retrying each set until it is acknowledged."""
    for number in range(count):
        study_id = f"backend-{number}"
        for _ in range(MAX_SET_ATTEMPTS):
            try:
                await manager.set_study_context(session_id, study_id)
            except ConcurrencyError:
                result["study_conflicts"] += 1
                continue
            result["studies"].append(study_id)
            break
        else:
            result["study_failures"].append(study_id)
        await asyncio.sleep(random.uniform(0, 0.2))  # spread over the other writers' work


async def main() -> None:
    """Create sessions, then run turns and study changes concurrently."""
    path, shared, result_file, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    manager = SessionManager(path=path, agent_command=STANDIN, timeout=60, kill_grace=0.5,
                             max_runs=2)
    result: dict[str, Any] = {"sessions": [], "turns": [], "turn_errors": [], "studies": [],
                              "study_conflicts": 0, "study_failures": []}
    try:
        for _ in range(3):
            session = await manager.create_session(study_id="backend")
            result["sessions"].append(session.session_id)
        print("ready", flush=True)
        await asyncio.gather(
            *(run_turns(manager, session_id, rounds, result)
              for session_id in result["sessions"]),
            run_turns(manager, shared, rounds, result),
            set_studies(manager, shared, 6 * rounds, result),
        )
    finally:
        await manager.stop()
        with open(result_file, "w", encoding="utf-8") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    asyncio.run(main())
