"""The pure, synchronous domain: ids, envelopes, errors, history and the aggregate.

Nothing here does I/O or imports an async library (a test enforces it).
"""
