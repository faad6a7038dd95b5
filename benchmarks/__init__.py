"""Side-by-side benchmarks of chatledger against a plain SQLite event table and the
`eventsourcing` library; run them with `python -m benchmarks.run` (see README.md).

Nothing here is imported by chatledger itself; tests only run the smallest size as a smoke test.
"""
