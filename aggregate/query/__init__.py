"""The read side: the query language (a filter in an AIP-160 subset, an AIP-132 order,
keyset pages with tamper-evident tokens, compiled to parameterised SQL and to an in-memory
predicate with the same semantics) and the index of the aggregates' latest views, fed by
the change feed and rebuilt from the stream (``docs/queries.md``)."""
