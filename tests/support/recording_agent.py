"""An agent for the security tests: records how it was really started, then is the stand-in.

It writes one JSON file per run into $CHATLEDGER_TEST_RUN_RECORD: the exact command line the
kernel started (`/proc/self/cmdline`), whether ANTHROPIC_API_KEY reached it, and, when it got
`--mcp-config=FILE`, that file's mode, its directory's mode and its servers. Then it runs
`chatledger.testing.standin` in this same process, so it answers like the stand-in. Linux only.
"""

from __future__ import annotations

import json
import os
import runpy
import stat
import sys
import time
from typing import Any


def mcp_details(argv: list[str]) -> dict[str, Any] | None:
    """Mode, directory mode and servers of the MCP config file named in argv, if any."""
    inline = [word.split("=", 1)[1] for word in argv if word.startswith("--mcp-config=")]
    if inline:
        path = inline[0]
    elif "--mcp-config" in argv:
        path = argv[argv.index("--mcp-config") + 1]
    else:
        return None
    with open(path, encoding="utf-8") as handle:
        servers = json.load(handle)["mcpServers"]
    return {
        "path": path,
        "mode": stat.S_IMODE(os.stat(path).st_mode),
        "directory_mode": stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
        "servers": servers,
    }


def main() -> None:
    """Record, then hand over to the stand-in agent."""
    with open("/proc/self/cmdline", "rb") as handle:
        cmdline = [word.decode() for word in handle.read().split(b"\0")[:-1]]
    record = {
        "cmdline": cmdline,
        "api_key": os.environ.get("ANTHROPIC_API_KEY"),
        "extra": os.environ.get("CHATLEDGER_TEST_EXTRA_SECRET"),
        "mcp": mcp_details(sys.argv),
        "cwd": os.getcwd(),
    }
    directory = os.environ["CHATLEDGER_TEST_RUN_RECORD"]
    name = os.path.join(directory, f"{time.time_ns():020d}-{os.getpid()}.json")
    with open(name, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    runpy.run_module("chatledger.testing.standin", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
