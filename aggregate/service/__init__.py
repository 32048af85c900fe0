"""Wiring and lifecycle: one ``trio.run``, subsystems started in dependency order."""
