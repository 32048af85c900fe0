"""Benchmarks of the command path against its ceilings (``bench/run.py``, docs/performance.md).

A package only so the load generator and the baselines can run as separate processes with
``python -m bench.<module>`` from the repository root and share a few helpers.
"""
