"""Tools for testing code that uses chatledger, without an LLM: the stand-in agent.

`python -m chatledger.testing.standin` answers like `claude --print` (same flags, same
stream-json lines) with scripted behaviours; point `agent_command` at it (see its module).
Nothing here is used by chatledger at run time.
"""
