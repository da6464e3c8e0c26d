"""``OUT.parts/`` on an object store (``s3://``, ``gs://``, ...): no rename, no lock.

The same journal, parts and resume as :class:`clsx.batch.parts.local.PartStore`, written the way an
object store allows:

- Every part, ``job.json`` and ``done.json`` is uploaded whole (:func:`clsx.io.storage.upload`):
  an object either exists complete or not at all, so the part names stay the progress
  record. A part is written to a local spool file first (so memory stays bounded by the
  window) and uploaded when committed.
- OUT (a single file) is streamed from the parts as one multipart upload, which the store
  publishes only when it is completed at the end: a killed run leaves no OUT. pyarrow cannot
  abort such an upload (apache/arrow#40502), so after an exception the upload is completed
  without the Parquet footer (no reader accepts it) and the object is deleted at once.
- ``--output-format dataset``: the parts are copied, server side, to ``OUT/``, then the store
  is removed; until then a resume finishes the copy.
- One writer per OUT: there is no ``flock``, so a lock object ``OUT.parts/lock`` names the
  holder (pid, host, time) and is refreshed every :data:`LOCK_REFRESH_S`. A second run stops
  while the lock is fresh; a lock whose holder is a dead process on this host, or that has
  not been refreshed for :data:`LOCK_STALE_S`, is taken over (a killed run is resumable at
  once on the same host, after that time elsewhere). Object stores offer no atomic
  create-if-absent through pyarrow, so two runs started within the same moment can both
  take it: the lock guards against mistakes, not against a race.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pyarrow as pa
import pyarrow.parquet as pq

from clsx.batch.parts.store import JOB_FILE, LOCK_FILE, Part, Store, part_name
from clsx.errors import ClsxError, os_error
from clsx.io.staging import publish_files
from clsx.io.storage import Location, one_line, upload

LOCK_REFRESH_S = 30.0
LOCK_STALE_S = 300.0
_HELD: set[str] = set()  # the tokens of the locks this process holds now


class ObjectPartStore(Store):
    """``OUT.parts/`` on an object store; see the module's notes."""

    def __init__(self, output: Location) -> None:
        self.output = output
        self.directory = output.with_name(f"{output.name}.parts")
        self._lock: LockObject | None = None

    def _file(self, name: str) -> Location:
        return self.directory.child(name)

    def _write(self, name: str, text: str) -> None:
        self._file(name).write_bytes(text.encode())

    def _files(self) -> list[Location]:
        return self.directory.files()

    def _output_writer(self, output_schema: pa.Schema) -> ObjectParquetWriter:
        return ObjectParquetWriter(self.output, output_schema)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock object for the block; see the module's notes."""
        lock = LockObject(self._file(LOCK_FILE), self.output)
        try:
            lock.acquire()
        except OSError as exc:  # the first write to OUT's place: a missing bucket, no access
            raise ClsxError(f"cannot write {self.output} (taking the lock {lock.location}: "
                            f"{one_line(exc)})") from exc
        self._lock = lock
        try:
            yield
        finally:
            self._lock = None
            try:
                job = self.exists()
            except OSError:
                job = True  # unreachable: keep whatever is there
            lock.release(None if job else self.directory)

    def writer(self, first: int, schema: pa.Schema) -> ObjectPartWriter:
        return ObjectPartWriter(self.directory, first, schema)

    def publish_dataset(self) -> None:
        """Copy the parts (server side) into the dataset ``OUT/``, then remove the store."""
        try:  # a half-copied OUT/ of an interrupted finish is replaced
            publish_files([part.path for part in self.parts()], self.output)
        except OSError as exc:
            raise os_error("writing", self.output, exc) from exc
        self.remove()

    def remove(self) -> None:
        """Delete the store but a held lock; the journal goes first, so that a failure
        part-way leaves parts of no known job rather than a job missing parts."""
        try:
            self._file(JOB_FILE).delete()
            for path in self._files():
                if self._lock is None or path.name != LOCK_FILE:
                    path.delete()
        except OSError:
            return  # unreachable now: the store stays whole, and resumable


class ObjectPartWriter:
    """Writes one part to a local spool file; :meth:`commit` uploads it under its name."""

    def __init__(self, directory: Location, first: int, schema: pa.Schema) -> None:
        self.directory = directory
        self.first = first
        self.rows = 0
        # Closed (and so deleted) by commit or discard.
        self.spool = tempfile.NamedTemporaryFile(prefix="clsx-part-", suffix=".parquet")  # noqa: SIM115
        self.writer = pq.ParquetWriter(self.spool.name, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self.writer.write_batch(batch)
        except OSError as exc:
            raise os_error("writing", self.spool.name, exc) from exc
        self.rows += batch.num_rows

    def commit(self, last: int) -> Part:
        """Close and upload: from here on the part survives any crash."""
        path = self.directory.child(part_name(self.first, last))
        try:
            self.writer.close()
            with pa.memory_map(self.spool.name) as spooled:
                upload(spooled.read_buffer(), path)
        except OSError as exc:
            raise ClsxError(f"writing {path} failed: {one_line(exc)}") from exc
        finally:
            self.spool.close()
        return Part(path, self.first, last)

    def discard(self) -> None:
        try:
            self.writer.close()
        finally:
            self.spool.close()


class ObjectParquetWriter:
    """OUT as one multipart upload, completed only when the ``with`` block succeeds (see
    the module's notes for an exception). Storage errors are left as :class:`OSError`, which
    :func:`clsx.batch.local_engine.batch_predict` reports with the resume hint (the parts stay)."""

    def __init__(self, target: Location, schema: pa.Schema) -> None:
        self.target = target
        self.schema = schema

    def __enter__(self) -> ObjectParquetWriter:
        self.stream = self.target.filesystem.open_output_stream(self.target.path)
        self.writer = pq.ParquetWriter(self.stream, self.schema)
        return self

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.writer.close()
            self.stream.close()
            return
        # No footer: what the close below completes is no Parquet file to any reader (there
        # is no abort in pyarrow), and ParquetWriter's __del__ must not write one later.
        self.writer.is_open = False
        with suppress(OSError):
            self.stream.close()
        with suppress(OSError):
            self.target.delete()


class LockObject:
    """``OUT.parts/lock``: who writes OUT, refreshed by a thread while held."""

    def __init__(self, location: Location, output: Location) -> None:
        self.location = location
        self.output = output
        self.token = uuid.uuid4().hex
        self.stop = threading.Event()
        self.refresher: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, or fail naming its holder."""
        holder = self._holder()
        if holder is not None and not _stale(holder):
            age = time.time() - float(holder.get("time", 0))
            raise ClsxError(
                f"{self.output} is being written by another clsx batch-predict (pid "
                f"{holder.get('pid', 'unknown')} on {holder.get('host', 'unknown')}, alive "
                f"{age:.0f} s ago); wait for it or stop it (a lock not refreshed for "
                f"{LOCK_STALE_S:.0f} s is taken over; delete {self.location} to take it now)")
        self._write()
        if (self._holder() or {}).get("token") != self.token:
            raise ClsxError(f"{self.output} was just locked by another clsx batch-predict; "
                            "wait for it or stop it")
        _HELD.add(self.token)
        self.refresher = threading.Thread(target=self._refresh, name="clsx-lock", daemon=True)
        self.refresher.start()

    def release(self, store: Location | None) -> None:
        """Let go, deleting the lock, or the whole ``store`` where given (it holds no job)."""
        self.stop.set()
        _HELD.discard(self.token)
        if self.refresher is not None:
            self.refresher.join()
        with suppress(OSError):  # unreachable: a later run takes the stale lock over
            if store is None:
                self.location.delete()
            else:
                store.delete_tree()

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.location.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # unreadable: an old or foreign lock, stale

    def _write(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                  "token": self.token}
        self.location.write_bytes(json.dumps(record).encode())

    def _refresh(self) -> None:
        while not self.stop.wait(LOCK_REFRESH_S):
            with suppress(OSError):  # the run itself reports an unreachable store
                self._write()


def _stale(holder: dict) -> bool:
    """Whether a lock's holder is gone: a dead process on this host (or this process, which
    no longer holds it), or no refresh lately."""
    if time.time() - float(holder.get("time", 0)) > LOCK_STALE_S:
        return True
    if holder.get("host") == socket.gethostname():
        if holder.get("pid") == os.getpid():
            return holder.get("token") not in _HELD
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError):
            return False
    return False
