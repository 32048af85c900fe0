"""The change feed to clients (``WatchAggregates``): a hub fed by the command path, fanned
out in process to per-watcher bounded queues (no JetStream consumer per watcher)."""
