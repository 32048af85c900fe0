"""The ``aggregate check`` verb: validate a configuration, compile its programs, and
explore them (``aggregate.check``). Exit codes as ``aggregate.cli``: 0 clean, 1 findings,
2 bad usage or configuration."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aggregate.cli import (
    EXIT_OK,
    EXIT_REFUSED,
    UsageError,
    _config_options,
    _manifest_option,
    _print,
    _settings,
)


def _count(minimum: int) -> Any:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def cmd_check(args: argparse.Namespace) -> int:
    import trio

    from aggregate.config import manifest_from_settings
    from aggregate.programs.registry import check_manifest, isolation_warnings
    from aggregate.service.core import program_limits

    if args.manifest_file is not None:
        if args.manifest is not None or args.example is not None:
            raise UsageError("give the manifest once: MANIFEST, --manifest or --example")
        args.manifest = args.manifest_file
    settings = _settings(args)
    manifest = manifest_from_settings(settings)
    limits = program_limits(settings)
    trio.run(lambda: check_manifest(manifest, limits=limits))
    warnings = isolation_warnings(manifest)
    summary: dict[str, Any] = {
        "ok": True,
        "config": str(settings.config_path) if settings.config_path else None,
        "manifest": manifest.origin,
        "aggregate_types": {
            name: {"language": t.language.value, "isolation": t.isolation.value}
            for name, t in sorted(manifest.types.items())
        },
        "warnings": warnings,
    }
    code = EXIT_OK
    if args.examples > 0:
        from aggregate.check import CheckOptions, check_programs

        options = CheckOptions(
            examples=args.examples,
            seed=args.seed,
            max_steps=args.max_steps,
            max_events=args.max_events,
            max_state_bytes=args.max_state_bytes,
            max_depth=settings.max_json_depth,
            max_int_digits=settings.max_json_int_digits,
        )
        report = check_programs(manifest, limits, options)
        warnings.extend(report.warnings)
        summary["explored"] = {
            "examples": args.examples,
            "seed": args.seed,
            "max_steps": args.max_steps,
            "aggregate_types": report.explored,
        }
        summary["findings"] = [f.to_json() for f in report.findings]
        summary["ok"] = report.ok
        code = EXIT_OK if report.ok else EXIT_REFUSED
    for warning in warnings:
        print(f"aggregate check: WARNING: {warning}", file=sys.stderr)
    for finding in summary.get("findings", []):
        print(
            f"aggregate check: FINDING: {finding['aggregate_type']}: {finding['kind']} after "
            f"{len(finding['commands'])} command(s): {finding['message'].splitlines()[0]}",
            file=sys.stderr,
        )
    _print(summary)
    return code


def add_check_verb(verbs: Any) -> None:
    """Add ``check`` to the CLI's sub-parsers."""
    p = verbs.add_parser(
        "check",
        help="validate a configuration, compile its programs and explore them",
        description="Load the configuration as `serve` would (config file, AGGREGATE_* "
        "variables, manifest), compile every aggregate type's programs, then explore them: "
        "command sequences generated from the command schemas and the example commands of "
        "the manifest run from the initial state, and each finding (non-determinism, apply "
        "failing on an event decide produced, decide crashing instead of rejecting, a state "
        "that is not JSON, a state or event list past its limit, a step over the time "
        "budget) is reported with a shrunk command sequence. Prints a summary as JSON "
        "(warnings and findings also on stderr). Connects to nothing. Exit code 0 clean, "
        "1 findings, 2 bad usage or configuration (names what is wrong).",
    )
    p.add_argument(
        "manifest_file",
        nargs="?",
        type=Path,
        metavar="MANIFEST",
        help="aggregate-type manifest file (same as --manifest)",
    )
    _config_options(p, example="check a bundled example manifest")
    _manifest_option(p)
    p.add_argument(
        "--examples",
        type=_count(0),
        default=100,
        metavar="N",
        help="command sequences tried per search round and type (default 100; 0 compiles only)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the search (default 0: repeatable)")
    p.add_argument(
        "--max-steps",
        type=_count(1),
        default=20,
        metavar="N",
        help="most commands in one sequence (default 20)",
    )
    p.add_argument(
        "--max-events",
        type=_count(1),
        default=100,
        metavar="N",
        help="most events one command may produce (default 100)",
    )
    p.add_argument(
        "--max-state-bytes",
        type=_count(1),
        default=1024 * 1024,
        metavar="N",
        help="largest state, as compact JSON, before a finding (default 1048576)",
    )
    p.set_defaults(run=cmd_check)
