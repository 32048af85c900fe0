"""Usage ingestion: usage records from many sources, each charged to its account once.

Sources (a directory of per-node batch files, or a JetStream subject) are read by the
ingestor, which turns every usage record into a ``RecordUsage`` command on the account's
ledger aggregate and submits it through the command handler, the same one gRPC commands go
through. See docs/ingestion.md for the file format and the exactly-once argument.
"""
