"""An agent for the ownership tests: writes the prompt it was given to a file, then is the
stand-in.

The prompt (stdin) goes to one file per run in $CHATLEDGER_TEST_PROMPTS, named so that files
sort in the order the runs started; then `chatledger.agent.standin` runs in this same process
on the same prompt, so it answers like the stand-in.
"""

from __future__ import annotations

import io
import os
import runpy
import sys
import time


def main() -> None:
    """Record the prompt, then hand it to the stand-in agent."""
    prompt = sys.stdin.buffer.read()
    name = os.path.join(os.environ["CHATLEDGER_TEST_PROMPTS"],
                        f"{time.time_ns():020d}-{os.getpid()}.txt")
    with open(name, "wb") as handle:
        handle.write(prompt)
    sys.stdin = io.TextIOWrapper(io.BytesIO(prompt), encoding="utf-8")
    runpy.run_module("chatledger.agent.standin", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
