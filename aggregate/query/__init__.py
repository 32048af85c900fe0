"""The read side: the query planner (``plan``) and the index of the aggregates' latest
views (``index``), fed by the change feed and rebuilt from the stream (DESIGN §10)."""
