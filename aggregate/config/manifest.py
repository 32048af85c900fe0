"""Read the aggregate-type manifest: from a file, a config file's section, or the settings.

A manifest maps aggregate type names to their decide/apply programs (DESIGN §7). Program
files are read here (relative paths resolve against the manifest's directory), so a
``Manifest`` is complete data: ``aggregate.programs`` compiles it without touching files.
Errors name the file and the key path (``aggregate_types.bank-account.decide``).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregate.config import values as v
from aggregate.config.files import read_mapping_file
from aggregate.config.settings import env_name
from aggregate.domain.errors import ConfigError
from aggregate.domain.manifest import (
    AggregateTypeManifest,
    Isolation,
    Language,
    Manifest,
    ProgramSource,
)
from aggregate.query.plan import index_statements, validate_index_path

if TYPE_CHECKING:
    from aggregate.config.settings import Settings

TYPE_KEYS = (
    "language",
    "isolation",
    "decide",
    "apply",
    "decide_source",
    "apply_source",
    "initial_state",
    "indexes",
)
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


def _suggest(key: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"


class _Section:
    """Where a manifest section lives, for error messages: ``<source>, key <path>``."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}, key {key}: {problem}")

    def parse(self, key: str, parse: v.Parser, value: object) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None


def parse_aggregate_types(data: object, source: str, base_dir: Path) -> Manifest:
    """Build a ``Manifest`` from the value of an ``aggregate_types`` key.

    ``source`` names the file (``manifest /x/m.yaml`` or ``config file /x/c.toml``) and
    ``base_dir`` is where relative program paths resolve.

    Raises:
        ConfigError: a bad type name, unknown key, language or isolation, a missing or
            unreadable program file, a bad initial_state, or no types at all.
    """
    section = _Section(source, base_dir)
    if not isinstance(data, dict) or not data:
        raise section.error(
            "aggregate_types",
            "must be a non-empty mapping of aggregate type names to their programs",
        )
    types = {}
    for name, spec in data.items():
        key = f"aggregate_types.{name}"
        type_name = section.parse(key, v.parse_aggregate_type, name)
        types[type_name] = _parse_type(section, key, type_name, spec)
    return Manifest(types=types, origin=source)


def _parse_type(section: _Section, key: str, name: str, spec: object) -> AggregateTypeManifest:
    if not isinstance(spec, dict):
        raise section.error(key, f"must be a mapping with keys {', '.join(TYPE_KEYS)}")
    unknown = sorted(set(spec) - set(TYPE_KEYS))
    if unknown:
        raise section.error(f"{key}.{unknown[0]}", "unknown key" + _suggest(unknown[0], TYPE_KEYS))
    language = section.parse(
        f"{key}.language", v.enum_parser(Language), spec.get("language", "starlark")
    )
    isolation = section.parse(
        f"{key}.isolation", v.enum_parser(Isolation), spec.get("isolation", "process")
    )
    if language is Language.PYTHON:
        if "isolation" in spec and isolation is not Isolation.INLINE:
            raise section.error(
                f"{key}.isolation",
                "python programs run in the service process; use isolation: inline or omit it",
            )
        isolation = Isolation.INLINE
    initial_state = spec.get("initial_state", {})
    if not isinstance(initial_state, dict):
        raise section.error(f"{key}.initial_state", "must be a JSON object (a mapping)")
    try:
        plain = json.loads(json.dumps(initial_state, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise section.error(f"{key}.initial_state", f"is not plain JSON: {exc}") from None
    if plain != initial_state:
        raise section.error(f"{key}.initial_state", "is not plain JSON (keys must be strings)")
    return AggregateTypeManifest(
        name=name,
        decide=_program(section, key, "decide", spec, language),
        apply=_program(section, key, "apply", spec, language),
        language=language,
        isolation=isolation,
        initial_state=plain,
        indexes=_indexes(section, key, name, spec.get("indexes", [])),
    )


def _indexes(section: _Section, key: str, name: str, value: object) -> tuple[str, ...]:
    """The ``indexes:`` of a type: field paths the index keeps expression indexes on."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise section.error(f"{key}.indexes", "must be a list of field paths like state.balance")
    for offset, path in enumerate(value):
        try:
            validate_index_path(path)
        except ValueError as exc:
            raise section.error(f"{key}.indexes[{offset}]", str(exc)) from None
    index_statements(name, value)  # the type name is a valid index name too
    return tuple(dict.fromkeys(value))


def _program(
    section: _Section, key: str, which: str, spec: dict[str, Any], language: Language
) -> ProgramSource:
    inline_key = f"{which}_source"
    if language is Language.PYTHON:
        if inline_key in spec:
            raise section.error(
                f"{key}.{inline_key}",
                f"python programs are references: write {which}: 'package.module:function'",
            )
        if which not in spec:
            raise section.error(f"{key}.{which}", "missing: give 'package.module:function'")
        reference = section.parse(f"{key}.{which}", v.parse_python_reference, spec[which])
        return ProgramSource(text=reference, origin=f"{section.source}, key {key}.{which}")
    if which in spec and inline_key in spec:
        raise section.error(f"{key}.{which}", f"give either {which} or {inline_key}, not both")
    if inline_key in spec:
        text = section.parse(f"{key}.{inline_key}", v.parse_str, spec[inline_key])
        return ProgramSource(text=text, origin=f"{section.source}, key {key}.{inline_key}")
    if which not in spec:
        raise section.error(
            f"{key}.{which}",
            f"missing: give {which} (a Starlark file) or {inline_key} (inline Starlark)",
        )
    path = section.parse(f"{key}.{which}", v.parse_path, spec[which])
    resolved = path if path.is_absolute() else section.base_dir / path
    try:
        return read_program_file(resolved)
    except ConfigError as exc:
        raise section.error(f"{key}.{which}", exc.message) from None


def read_program_file(path: Path) -> ProgramSource:
    """Read a Starlark program file; its origin is the path.

    Raises:
        ConfigError: the file is missing, a directory, unreadable or not UTF-8 (names it).
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"program file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"program file {path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"program file {path} cannot be read: {exc.strerror or exc}") from None
    return ProgramSource(text=text, origin=str(path))


def load_manifest(path: Path | str) -> Manifest:
    """Load a manifest file (YAML/TOML/JSON by extension) holding ``aggregate_types:``.

    Raises:
        ConfigError: the file cannot be read or parsed, has keys other than
            ``aggregate_types``, or any type is invalid (see ``parse_aggregate_types``).
    """
    resolved = Path(path).expanduser().resolve()
    source = f"manifest {resolved}"
    data = read_mapping_file(resolved, "manifest")
    unknown = sorted(set(data) - {"aggregate_types"})
    if unknown:
        raise ConfigError(f"{source}, key {unknown[0]}: unknown key; expected only aggregate_types")
    if "aggregate_types" not in data:
        raise ConfigError(f"{source} defines no aggregate types (key aggregate_types)")
    return parse_aggregate_types(data["aggregate_types"], source, resolved.parent)


def check_program_settings(settings: Settings) -> None:
    """Check that the settings choose at most one way of configuring programs, and that
    ``decide_program[_path]`` / ``apply_program[_path]`` are complete and consistent.
    Reads no files.

    Raises:
        ConfigError: naming the conflicting settings and where each came from.
    """
    o = settings.origin_of
    for which in ("decide", "apply"):
        inline, path = f"{which}_program", f"{which}_program_path"
        if getattr(settings, inline) is not None and getattr(settings, path) is not None:
            raise ConfigError(
                f"{inline} ({o(inline)}) and {path} ({o(path)}) are both set; give the {which} "
                "program inline or as a file, not both"
            )
    has_decide = settings.decide_program is not None or settings.decide_program_path is not None
    has_apply = settings.apply_program is not None or settings.apply_program_path is not None
    if has_decide != has_apply:
        given, missing = ("decide", "apply") if has_decide else ("apply", "decide")
        name = f"{given}_program"
        name = name if getattr(settings, name) is not None else f"{name}_path"
        raise ConfigError(
            f"{name} is set ({o(name)}) but neither {missing}_program nor "
            f"{missing}_program_path is; set both programs (e.g. "
            f"{env_name(missing + '_program_path')})"
        )
    if has_decide and settings.program_language is Language.PYTHON:
        for path in ("decide_program_path", "apply_program_path"):
            if getattr(settings, path) is not None:
                raise ConfigError(
                    f"{path} ({o(path)}): python programs are references, not files; set "
                    f"{env_name(path.removesuffix('_path'))}='package.module:function'"
                )
        if (
            settings.program_isolation is Isolation.PROCESS
            and settings.origin_of("program_isolation") != "default"
        ):
            raise ConfigError(
                f"program_isolation ({o('program_isolation')}): python programs run in the "
                "service process; set it to inline or leave it unset"
            )
        for inline in ("decide_program", "apply_program"):
            try:
                v.parse_python_reference(getattr(settings, inline))
            except ValueError as exc:
                raise ConfigError(f"{inline} ({o(inline)}): {exc}") from None
    programs = "decide_program" if settings.decide_program is not None else "decide_program_path"
    ways = {
        "manifest_path": settings.manifest_path is not None,
        "aggregate_types": settings.aggregate_types is not None,
        programs: has_decide,
    }
    chosen = [f"{name} ({o(name)})" for name, given in ways.items() if given]
    if len(chosen) > 1:
        raise ConfigError(
            f"aggregate types are configured more than once: {', '.join(chosen)}; use one"
        )


def manifest_from_settings(settings: Settings) -> Manifest:
    """The effective manifest: the file at ``manifest_path``, else the config file's
    ``aggregate_types`` section, else one type named ``aggregate_type`` served by
    ``decide_program[_path]`` / ``apply_program[_path]``.

    Raises:
        ConfigError: conflicting or incomplete settings (``check_program_settings``), an
            invalid manifest or program file, or nothing configured (says how to).
    """
    check_program_settings(settings)
    if settings.manifest_path is not None:
        return load_manifest(settings.manifest_path)
    if settings.aggregate_types is not None:
        return settings.aggregate_types
    if settings.decide_program is None and settings.decide_program_path is None:
        raise ConfigError(
            "no aggregate types are configured: set AGGREGATE_MANIFEST_PATH to a manifest "
            "file, add an aggregate_types section to the config file (AGGREGATE_CONFIG_PATH), "
            "or set AGGREGATE_DECIDE_PROGRAM[_PATH] and AGGREGATE_APPLY_PROGRAM[_PATH] "
            "(docs/configuration.md)"
        )
    python = settings.program_language is Language.PYTHON
    entry = AggregateTypeManifest(
        name=settings.aggregate_type,
        decide=_settings_program(settings, "decide"),
        apply=_settings_program(settings, "apply"),
        language=settings.program_language,
        isolation=Isolation.INLINE if python else settings.program_isolation,
    )
    origin = f"decide/apply programs ({settings.origin_of('aggregate_type')} names the type)"
    return Manifest(types={entry.name: entry}, origin=origin)


def _settings_program(settings: Settings, which: str) -> ProgramSource:
    inline = getattr(settings, f"{which}_program")
    where = settings.origin_of(f"{which}_program")
    if inline is not None:
        text = inline.strip() if settings.program_language is Language.PYTHON else inline
        return ProgramSource(text=text, origin=where)
    path: Path = getattr(settings, f"{which}_program_path")
    try:
        return read_program_file(path)
    except ConfigError as exc:
        raise ConfigError(
            f"{which}_program_path ({settings.origin_of(which + '_program_path')}): {exc.message}"
        ) from None


def example_manifest_path(name: str = "bank", *, examples_dir: Path | None = None) -> Path:
    """The manifest of a bundled example (``bank``, ``billing``) shipped in the package.

    Raises:
        ConfigError: no such example (lists the ones that exist).
    """
    root = EXAMPLES_DIR if examples_dir is None else examples_dir
    path = root / name / "manifest.yaml"
    if not path.is_file():
        found = sorted(p.parent.name for p in root.glob("*/manifest.yaml"))
        known = ", ".join(found) if found else "none installed"
        raise ConfigError(f"no bundled example {name!r} (no {path}); examples: {known}")
    return path
