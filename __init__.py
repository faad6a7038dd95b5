"""chatledger: an event-sourced, verifiable conversation ledger for LLM command-line agents."""

__version__ = "0.1.0"
