"""The read side's query language: a filter (AIP-160 subset), an order (AIP-132), keyset
pages with tamper-evident tokens, compiled to parameterised SQL over the views index and to
an in-memory predicate with the same semantics (``docs/queries.md``)."""
