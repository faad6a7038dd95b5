"""The old name of the stand-in agent, kept so `python -m chatledger.agent.standin` still works.

The stand-in lives in `chatledger.testing.standin` now; this module only runs it.
"""

from __future__ import annotations

from ..testing.standin import main

if __name__ == "__main__":
    main()
