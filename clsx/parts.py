"""Resumable output: committed part files and a job journal in ``OUT.parts/`` beside OUT.

The input is read as a fixed sequence of windows (``window_rows`` rows each, file after
file), so window ``i`` always holds the same rows. A part file holds the predictions of the
consecutive windows ``first..last`` and is named after them
(``part-00000000-00000041.parquet``); it is written under a hidden temporary name and renamed
when complete, so a part that exists is whole, and the part names are the progress record.
``job.json`` records what the job was (inputs with size and mtime, model fingerprint,
options) so that a resume with anything changed is refused rather than mixing results.
Every file here is written through :mod:`clsx.durable`, so what a crash leaves is on disk.

One process at a time writes an OUT: it holds an exclusive ``flock`` on ``OUT.parts/lock``
(which holds its pid) from before the job is checked until it has cleaned up
(:meth:`PartStore.locked`).

:class:`Store` holds what does not depend on the storage; :class:`PartStore` is the local
disk's, :class:`clsx.object_parts.ObjectPartStore` an object store's (no rename, no lock).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clsx import durable
from clsx.errors import ClsxError, os_error
from clsx.parquet import AtomicParquetWriter, parquet_file
from clsx.staging import staged_directory
from clsx.storage import Location, local

JOB_FILE = "job.json"
DONE_FILE = "done.json"
LOCK_FILE = "lock"
_LOCK_ATTEMPTS = 100  # the lock file vanishing under us this often is no race but sabotage
_PART_NAME = re.compile(r"^part-(\d{8})-(\d{8})\.parquet$")


@dataclass(frozen=True)
class Part:
    """One committed part: windows ``first..last`` (inclusive)."""

    path: Location
    first: int
    last: int

    @property
    def rows(self) -> int:
        """Its row count, from the Parquet footer."""
        with parquet_file(self.path) as file:
            return file.metadata.num_rows


def parts_directory(output: Path) -> Path:
    """Where the parts of ``output`` are kept while the job runs."""
    return output.with_name(f"{output.name}.parts")


def open_store(output: Location) -> Store:
    """The part store of ``output``: :class:`PartStore` on a local disk, an
    :class:`~clsx.object_parts.ObjectPartStore` on an object store."""
    if output.is_local:
        return PartStore(output.local_path)
    from clsx.object_parts import ObjectPartStore

    return ObjectPartStore(output)


class Store:
    """What every part store does (the journal, the parts, assembling OUT, the job check),
    written against the few file operations each storage provides."""

    directory: Path | Location

    def _file(self, name: str) -> Location:
        """The store's file ``name``."""
        raise NotImplementedError

    def _write(self, name: str, text: str) -> None:
        """Replace the store's file ``name`` with ``text``, as one whole."""
        raise NotImplementedError

    def _files(self) -> list[Location]:
        """The files in the store."""
        raise NotImplementedError

    def _make(self) -> None:
        """Create the store's directory, where the storage has directories."""

    def _output_writer(self, output_schema: pa.Schema):
        """A ``with`` writer (``write(batch)``) that publishes OUT only when complete."""
        raise NotImplementedError

    def remove(self) -> None:
        """Delete the store (but a held lock)."""
        raise NotImplementedError

    def exists(self) -> bool:
        """Whether a job was started here (its journal is written), resumable or done."""
        return self._file(JOB_FILE).is_file()

    def parts(self) -> list[Part]:
        """Committed parts in window order; a gap (a damaged store) is an error."""
        found = []
        for path in self._files():
            match = _PART_NAME.match(path.name)
            if match:
                found.append(Part(path, int(match[1]), int(match[2])))
        found.sort(key=lambda part: part.first)
        expected = 0
        for part in found:
            if part.first != expected:
                raise ClsxError(f"{self.directory} is missing windows {expected}..{part.first - 1}"
                                "; delete it (or pass --overwrite) and start over")
            expected = part.last + 1
        return found

    def committed_rows(self) -> int:
        return sum(part.rows for part in self.parts())

    def start(self, job: dict[str, Any]) -> None:
        """Create the store for a new job, or check that an existing one is the same job."""
        if self.exists():
            self._check_same_job(json.loads(self._file(JOB_FILE).read_bytes()), job)
        else:
            self.remove()  # parts without a journal belong to no known job
            try:
                self._make()
                self._write(JOB_FILE, json.dumps(job, indent=2, sort_keys=True) + "\n")
            except OSError as exc:
                raise os_error("creating", self.directory, exc) from exc

    def is_done(self) -> bool:
        return self._file(DONE_FILE).is_file()

    def mark_done(self, rows: int) -> None:
        """Record that every window is committed (assembly may still be pending)."""
        try:
            self._write(DONE_FILE, json.dumps({"rows": rows}) + "\n")
        except OSError as exc:
            raise os_error("writing", self._file(DONE_FILE), exc) from exc

    def done_rows(self) -> int:
        return int(json.loads(self._file(DONE_FILE).read_bytes())["rows"])

    def assemble(self, schema: pa.Schema) -> None:
        """Concatenate the parts, in order, into OUT (published only when whole), then
        remove the store.

        OUT is in place before the parts go, so a crash in between leaves both, and a resume
        assembles again.
        """
        with self._output_writer(schema) as writer:
            for part in self.parts():
                with parquet_file(part.path) as file:
                    for batch in file.iter_batches():
                        writer.write(batch)
        self.remove()

    def _check_same_job(self, recorded: dict[str, Any], job: dict[str, Any]) -> None:
        changed = sorted(key for key in set(recorded) | set(job)
                         if recorded.get(key) != job.get(key))
        if changed:
            details = "; ".join(f"{key}: was {_shown(recorded.get(key))}, now "
                                f"{_shown(job.get(key))}" for key in changed[:3])
            raise ClsxError(
                f"cannot resume: the job in {self.directory} differs ({details}); rerun the "
                "original command, or pass --overwrite to start over"
            )


class PartStore(Store):
    """``OUT.parts/`` on a local disk: every file durably renamed into place, an ``flock``."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.directory = parts_directory(output)
        # Directories above OUT that this job created, removed again if it leaves nothing.
        self.created = [p for p in output.parents if not p.exists()]
        self._lock: int | None = None  # the descriptor holding the flock, while held

    def _file(self, name: str) -> Location:
        return local(self.directory / name)

    def _write(self, name: str, text: str) -> None:
        durable.write_file(self.directory / name, text)

    def _files(self) -> list[Location]:
        return [local(path) for path in self.directory.glob("part-*.parquet")]

    def _make(self) -> None:
        durable.make_directory(self.directory)

    def _output_writer(self, output_schema: pa.Schema) -> AtomicParquetWriter:
        return AtomicParquetWriter(self.output, output_schema)

    def start(self, job: dict[str, Any]) -> None:
        super().start(job)
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)  # an interrupted part, never committed

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the exclusive lock on OUT for the block: one writer per OUT.

        Another process holding it is an error naming its pid, at once rather than after
        its work. On leaving, the lock file goes, and the whole directory if it holds no job
        (a run that saved no work leaves no ``OUT.parts/``).
        """
        self._lock = self._acquire()
        try:
            yield
        finally:
            self._release()

    def _acquire(self) -> int:
        path = self.directory / LOCK_FILE
        for _ in range(_LOCK_ATTEMPTS):
            try:
                durable.make_directory(self.directory)
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:
                continue  # the holder removed the directory as it finished; make it anew
            except OSError as exc:
                raise os_error("creating", self.directory, exc) from exc
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
                os.close(descriptor)
                raise ClsxError(
                    f"{self.output} is being written by another clsx batch-predict "
                    f"(pid {holder or 'unknown'}); wait for it or stop it") from None
            except OSError as exc:  # e.g. a network file system without locks
                os.close(descriptor)
                raise os_error("locking", path, exc) from exc
            # Between our open and flock the holder may have unlinked the file (it does so
            # just before it lets go): a lock on that orphan would exclude nobody.
            if _same_file(path, descriptor):
                os.ftruncate(descriptor, 0)
                os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
                return descriptor
            os.close(descriptor)
        raise ClsxError(f"cannot lock {path}: it keeps disappearing; is another program "
                        f"deleting {self.directory}?")

    def _release(self) -> None:
        # The lock file is unlinked before the flock goes, so that no one locks it after us
        # while it is about to disappear (see the inode check in _acquire).
        try:
            if self.exists():
                (self.directory / LOCK_FILE).unlink(missing_ok=True)
            else:  # nothing to resume: only the lock, or what an interrupted remove() left
                shutil.rmtree(self.directory, ignore_errors=True)
            self._prune()
        finally:
            descriptor, self._lock = self._lock, None
            os.close(descriptor)

    def writer(self, first: int, schema: pa.Schema) -> PartWriter:
        return PartWriter(self.directory, first, schema)

    def publish_dataset(self) -> None:
        """Make OUT a directory of the Parquet parts (no journal, no lock), then remove the
        store.

        The parts are hard-linked into a staging directory that is renamed to OUT, so the
        store stays whole (and the lock held) until OUT is on disk: a crash at any point
        leaves something a resume finishes.
        """
        try:
            with staged_directory(self.output, overwrite=True) as stage:
                for part in self.parts():
                    _link_or_copy(part.path.local_path, stage / part.path.name)
        except OSError as exc:
            raise os_error("writing", self.output, exc) from exc
        self.remove()

    def remove(self) -> None:
        """Delete the store (but a held lock), and the directories made for OUT if they are
        left empty.

        The journal goes first, and durably: a crash part-way then leaves parts of no known
        job, which no resume uses, rather than a job that has lost some of its parts.
        """
        try:
            (self.directory / JOB_FILE).unlink(missing_ok=True)
            durable.fsync_directory(self.directory)
        except FileNotFoundError:
            pass  # no store at all
        except OSError:
            return  # nothing can be deleted here; the store stays whole, and resumable
        if self._lock is None:
            shutil.rmtree(self.directory, ignore_errors=True)
        elif self.directory.is_dir():
            for entry in self.directory.iterdir():
                if entry.name == LOCK_FILE:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        self._prune()

    def _prune(self) -> None:
        """Remove the store's directory if it is empty, then the directories made for OUT
        that are left empty (another run may have put something in them since: kept)."""
        for directory in (self.directory, *self.created):
            with suppress(OSError):  # not empty, or already gone
                directory.rmdir()

class PartWriter:
    """Writes one part under a temporary name; :meth:`commit` names it after its windows."""

    def __init__(self, directory: Path, first: int, schema: pa.Schema) -> None:
        self.directory = directory
        self.first = first
        self.rows = 0
        self.temporary = directory / f".part-{first:08d}.tmp"
        try:
            self.writer = pq.ParquetWriter(self.temporary, schema)
        except OSError as exc:
            raise os_error("writing", self.temporary, exc) from exc

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self.writer.write_batch(batch)
        except OSError as exc:
            raise os_error("writing", self.temporary, exc) from exc
        self.rows += batch.num_rows

    def commit(self, last: int) -> Part:
        """Close, flush to disk and rename: from here on the part survives any crash."""
        path = self.directory / part_name(self.first, last)
        try:
            self.writer.close()
            durable.rename(self.temporary, path)
        except OSError as exc:
            raise os_error("writing", path, exc) from exc
        return Part(local(path), self.first, last)

    def discard(self) -> None:
        try:
            self.writer.close()
        finally:
            self.temporary.unlink(missing_ok=True)


def part_name(first: int, last: int) -> str:
    """The name of the part holding windows ``first..last``."""
    return f"part-{first:08d}-{last:08d}.parquet"


def _same_file(path: Path, descriptor: int) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    try:
        named, held = os.stat(path), os.fstat(descriptor)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _link_or_copy(source: Path, target: Path) -> None:
    """A second name for a (synced) part; a copy where the file system has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _shown(value: Any) -> str:
    """An option's recorded value as a user typed it; None is an option left at its default."""
    return "not given" if value is None else repr(value)
