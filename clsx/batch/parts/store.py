"""The journal of a resumable batch-predict job, whatever the storage: committed part files
and ``job.json`` in ``OUT.parts/`` beside OUT.

The input is read as a fixed sequence of windows (``window_rows`` rows each, file after
file), so window ``i`` always holds the same rows. A part file holds the predictions of the
consecutive windows ``first..last`` and is named after them
(``part-00000000-00000041.parquet``); a part that exists is whole, and the part names are the
progress record. ``job.json`` records what the job was (inputs with size and mtime, model
fingerprint, options) so that a resume with anything changed is refused rather than mixing
results.

:class:`Store` holds what does not depend on the storage; :class:`~clsx.batch.parts.local.PartStore`
is the local disk's, :class:`~clsx.batch.parts.objects.ObjectPartStore` an object store's.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from clsx.errors import ClsxError, os_error
from clsx.io.parquet import parquet_file
from clsx.io.storage import Location

JOB_FILE = "job.json"
DONE_FILE = "done.json"
LOCK_FILE = "lock"
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


class Store(ABC):
    """What every part store does (the journal, the parts, assembling OUT, the job check),
    written against the few file operations each storage provides, and what the engines
    call on every store (:meth:`locked`, :meth:`writer`, :meth:`publish_dataset`)."""

    directory: Path | Location

    @abstractmethod
    def _file(self, name: str) -> Location:
        """The store's file ``name``."""

    @abstractmethod
    def _write(self, name: str, text: str) -> None:
        """Replace the store's file ``name`` with ``text``, as one whole."""

    @abstractmethod
    def _files(self) -> list[Location]:
        """The files in the store."""

    def _make(self) -> None:  # noqa: B027 (a no-op where the storage has no directories)
        """Create the store's directory, where the storage has directories."""

    @abstractmethod
    def _output_writer(self, output_schema: pa.Schema):
        """A ``with`` writer (``write(batch)``) that publishes OUT only when complete."""

    @abstractmethod
    def remove(self) -> None:
        """Delete the store (but a held lock)."""

    def exists(self) -> bool:
        """Whether a job was started here (its journal is written), resumable or done."""
        return self._file(JOB_FILE).is_file()

    def parts(self, contiguous: bool = True) -> list[Part]:
        """Committed parts in window order. Overlapping parts (a damaged store) are an
        error, and so is a gap unless not ``contiguous`` (Ray commits out of order)."""
        found = []
        for path in self._files():
            match = _PART_NAME.match(path.name)
            if match:
                found.append(Part(path, int(match[1]), int(match[2])))
        found.sort(key=lambda part: part.first)
        expected = 0
        for part in found:
            if part.first < expected or (contiguous and part.first != expected):
                raise ClsxError(f"{self.directory} is missing windows {expected}.."
                                f"{part.first - 1}; delete it (or pass --overwrite) and start "
                                "over" if part.first > expected else
                                f"{self.directory} holds overlapping parts (windows "
                                f"{part.first}..{expected - 1} twice); delete it (or pass "
                                "--overwrite) and start over")
            expected = part.last + 1
        return found

    def committed_rows(self) -> int:
        return sum(part.rows for part in self.parts(contiguous=False))

    def recorded_job(self) -> dict[str, Any] | None:
        """The job recorded in the journal (None: no job was started here)."""
        return json.loads(self._file(JOB_FILE).read_bytes()) if self.exists() else None

    def check_job(self, job: dict[str, Any], *decided_later: str) -> dict[str, Any] | None:
        """Refuse a job recorded here that differs from ``job`` in anything but the keys
        ``decided_later`` (:meth:`start` checks those once they are known); the recorded
        job (None: none)."""
        recorded = self.recorded_job()
        if recorded is not None:
            self._check_same_job({k: v for k, v in recorded.items() if k not in decided_later},
                                 {k: v for k, v in job.items() if k not in decided_later})
        return recorded

    def start(self, job: dict[str, Any]) -> None:
        """Create the store for a new job, or check that an existing one is the same job."""
        recorded = self.recorded_job()
        if recorded is not None:
            self._check_same_job(recorded, job)
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

    @abstractmethod
    def locked(self) -> AbstractContextManager[None]:
        """Hold the one-writer lock on OUT for the ``with`` block."""

    @abstractmethod
    def writer(self, first: int, schema: pa.Schema) -> PartWriter:
        """A writer of the part that starts at window ``first``."""

    @abstractmethod
    def publish_dataset(self) -> None:
        """Make OUT a directory of the parts, then remove the store."""


class PartWriter(Protocol):
    """Writes one part; :meth:`commit` makes it a committed part named after its windows."""

    rows: int

    def write(self, batch: pa.RecordBatch) -> None: ...

    def commit(self, last: int) -> Part: ...

    def discard(self) -> None: ...


def part_name(first: int, last: int) -> str:
    """The name of the part holding windows ``first..last``."""
    return f"part-{first:08d}-{last:08d}.parquet"



def _shown(value: Any) -> str:
    """An option's recorded value as a user typed it; None is an option left at its default."""
    return "not given" if value is None else repr(value)
