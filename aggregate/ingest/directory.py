"""Directory sources: ``<root>/nodes/<node>/usage_*.toml|json``, one source per node.

A run lists the node's batch files (names, sizes, modification times) and compares the
listing's digest with the source's cursor: unchanged, the source is skipped without reading
a file. Otherwise files are taken in name order (``usage_<YYYY-MM-DD-HH>`` sorts in time
order); a file whose listing stamp and hash match a complete mark is skipped, a file with a
partial mark and the same hash goes on from its next record, any other file is read from
its first record (records already charged are answered ``already charged`` by the ledger).
The first malformed file or record halts the source there, with the file, record index and
reason in its progress; later files wait for the next run.

Symbolic links are not followed; files are read in worker threads, at most
``max_file_bytes`` each.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio

from aggregate.ingest.progress import FileMark, SourceError
from aggregate.ingest.records import BadRecordError, parse_batch

if TYPE_CHECKING:
    from pathlib import Path

    from aggregate.ingest.charge import SourceRun

log = logging.getLogger(__name__)
BATCH_NAME = re.compile(r"usage_[A-Za-z0-9_.-]{1,100}\.(toml|json)")
NODE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class ListedFile:
    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class DirectorySource:
    """One node's directory."""

    tenant_id: str
    name: str
    path: Path
    kind: str = "directory"


def node_directories(root: Path) -> list[str]:
    """The node names under ``<root>/nodes`` (directories with valid names), sorted.

    Raises:
        OSError: ``<root>/nodes`` cannot be listed.
    """
    with os.scandir(root / "nodes") as entries:
        return sorted(
            e.name
            for e in entries
            if e.is_dir(follow_symlinks=False) and NODE_NAME.fullmatch(e.name)
        )


def list_batch_files(path: Path, max_files: int) -> list[ListedFile]:
    """The batch files of one node directory, sorted by name.

    Raises:
        OSError: the directory cannot be listed.
        BadRecordError: more than ``max_files`` batch files.
    """
    listed = []
    with os.scandir(path) as entries:
        for entry in entries:
            if not BATCH_NAME.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
            listed.append(ListedFile(entry.name, info.st_size, info.st_mtime_ns))
            if len(listed) > max_files:
                raise BadRecordError(
                    f"more than {max_files} batch files in the node directory "
                    "(AGGREGATE_INGEST_MAX_FILES_PER_SOURCE): archive consumed files"
                )
    return sorted(listed, key=lambda f: f.name)


def listing_digest(files: list[ListedFile]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{f.size}\0{f.mtime_ns}\n".encode())
    return digest.hexdigest()


def read_bounded(path: Path, limit: int) -> bytes:
    """The file's bytes, refusing more than ``limit`` and symbolic links.

    Raises:
        OSError: the file cannot be opened or read.
        BadRecordError: it is larger than ``limit``.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BadRecordError("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BadRecordError(
            f"the file is larger than {limit} bytes (AGGREGATE_INGEST_MAX_FILE_BYTES)"
        )
    return data


async def run_directory(source: DirectorySource, run: SourceRun) -> None:
    """Consume what is new in ``source``; the outcome is in ``run.report`` and
    ``run.progress`` (saved after each file).

    Raises:
        OSError: the directory or a file cannot be read (the source fails for this run).
        AggregateError: a charge failed for a reason other than a bad record.
    """
    options = run.charger.options
    try:
        listing = await anyio.to_thread.run_sync(
            list_batch_files, source.path, options.max_files_per_source
        )
    except BadRecordError as exc:
        run.halt(SourceError(exc.message, at=run_at()))
        await run.save()
        return
    digest = listing_digest(listing)
    if run.progress.cursor == digest:
        run.report.status = "halted" if run.progress.last_error else "skipped"
        run.report.error = run.progress.last_error
        return
    names = {f.name for f in listing}
    run.progress = replace(
        run.progress, files={n: m for n, m in run.progress.files.items() if n in names}
    )
    for listed in listing:
        halted = await _run_file(source, run, listed)
        if halted:
            run.progress = replace(run.progress, cursor=digest, last_run_at=run_at())
            await run.save()
            return
    run.progress = replace(run.progress, cursor=digest, last_error=None, last_run_at=run_at())
    await run.save()


async def _run_file(source: DirectorySource, run: SourceRun, listed: ListedFile) -> bool:
    """Consume one file; True when the source halted on it."""
    options = run.charger.options
    mark = run.progress.files.get(listed.name)
    if (
        mark is not None
        and mark.complete
        and (mark.size, mark.mtime_ns)
        == (
            listed.size,
            listed.mtime_ns,
        )
    ):
        return False
    try:
        data = await anyio.to_thread.run_sync(
            read_bounded, source.path / listed.name, options.max_file_bytes
        )
    except BadRecordError as exc:
        run.halt(SourceError(exc.message, file=listed.name, at=run_at()))
        return True
    sha = hashlib.sha256(data).hexdigest()
    start = 0
    if mark is not None and mark.sha256 == sha:
        if mark.complete:
            _set_mark(run, listed, replace(mark, size=listed.size, mtime_ns=listed.mtime_ns))
            return False
        start = mark.records_done
    fmt = listed.name.rsplit(".", 1)[1]
    parsed = parse_batch(
        data, fmt=fmt, source_node=source.name, max_records=options.max_records_per_batch
    )

    def checkpoint(done: int) -> None:
        _set_mark(run, listed, FileMark(listed.size, listed.mtime_ns, sha, done, False))

    checkpoint(start)
    try:
        done, refused = await run.charge_all(
            parsed.records, start, checkpoint=checkpoint, where=listed.name
        )
    except BaseException:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await run.save()  # what is done stays done
            except Exception as exc:  # the original failure is the one to report
                log.warning("ingest source %s: progress not saved: %s", source.name, exc)
        raise
    error = refused or parsed.error
    if error is not None:
        checkpoint(done)
        run.halt(
            SourceError(error.message, file=listed.name, record_index=error.index, at=run_at())
        )
        return True
    _set_mark(run, listed, FileMark(listed.size, listed.mtime_ns, sha, done, True))
    await run.save()
    return False


def _set_mark(run: SourceRun, listed: ListedFile, mark: FileMark) -> None:
    run.progress = replace(run.progress, files={**run.progress.files, listed.name: mark})


def run_at() -> str:
    from aggregate.ingest.charge import utc_now

    return utc_now()
