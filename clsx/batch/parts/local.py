"""The part store on a local disk: every file durably renamed into place, and an ``flock``.

Parts are written under a hidden temporary name and renamed when complete. Every file here
is written through :mod:`clsx.io.durable`, so what a crash leaves is on disk. One process at
a time writes an OUT: it holds an exclusive ``flock`` on ``OUT.parts/lock`` (which holds its
pid) from before the job is checked until it has cleaned up (:meth:`PartStore.locked`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clsx.batch.parts.store import JOB_FILE, LOCK_FILE, Part, Store, part_name
from clsx.errors import ClsxError, os_error
from clsx.io import durable
from clsx.io.parquet import AtomicParquetWriter
from clsx.io.staging import staged_directory
from clsx.io.storage import Location, local

_LOCK_ATTEMPTS = 100  # the lock file vanishing under us this often is no race but sabotage


def parts_directory(output: Path) -> Path:
    """Where the parts of ``output`` are kept while the job runs."""
    return output.with_name(f"{output.name}.parts")


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

    def writer(self, first: int, schema: pa.Schema) -> LocalPartWriter:
        return LocalPartWriter(self.directory, first, schema)

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

class LocalPartWriter:
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
