"""Bundled example aggregate types (packaged data): ``bank`` and ``billing``.

Each directory holds a ``manifest.yaml`` and its Starlark programs; ``bank`` also has a
Python version of the same programs (``aggregate.examples.bank.python_program``).
Load one with ``aggregate.config.manifest.load_manifest(example_manifest_path("bank"))``.
"""
