"""Resumable output: committed part files and a job journal in ``OUT.parts/`` beside OUT.

The input is read as a fixed sequence of windows (``window_rows`` rows each, file after
file), so window ``i`` always holds the same rows. A part file holds the predictions of the
consecutive windows ``first..last`` and is named after them
(``part-00000000-00000041.parquet``); it is written under a hidden temporary name and renamed
when complete, so a part that exists is whole, and the part names are the progress record.
``job.json`` records what the job was (inputs with size and mtime, model fingerprint,
options) so that a resume with anything changed is refused rather than mixing results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clsx.errors import ClsxError, os_error
from clsx.parquet import AtomicParquetWriter

JOB_FILE = "job.json"
DONE_FILE = "done.json"
_PART_NAME = re.compile(r"^part-(\d{8})-(\d{8})\.parquet$")


@dataclass(frozen=True)
class Part:
    """One committed part: windows ``first..last`` (inclusive)."""

    path: Path
    first: int
    last: int

    @property
    def rows(self) -> int:
        """Its row count, from the Parquet footer."""
        return pq.read_metadata(self.path).num_rows


def parts_directory(output: Path) -> Path:
    """Where the parts of ``output`` are kept while the job runs."""
    return output.with_name(f"{output.name}.parts")


class PartStore:
    """The ``OUT.parts/`` directory: job journal, committed parts, completion marker."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.directory = parts_directory(output)
        # Directories above OUT that this job created, removed again if it leaves nothing.
        self.created = [p for p in output.parents if not p.exists()]

    def exists(self) -> bool:
        return self.directory.is_dir()

    def parts(self) -> list[Part]:
        """Committed parts in window order; a gap (a damaged store) is an error."""
        found = []
        for path in self.directory.glob("part-*.parquet"):
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
        journal = self.directory / JOB_FILE
        if journal.is_file():
            self._check_same_job(json.loads(journal.read_text()), job)
        else:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                _write_atomically(journal, json.dumps(job, indent=2, sort_keys=True) + "\n")
            except OSError as exc:
                raise os_error("creating", self.directory, exc) from exc
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)  # an interrupted part, never committed

    def is_done(self) -> bool:
        return (self.directory / DONE_FILE).is_file()

    def mark_done(self, rows: int) -> None:
        """Record that every window is committed (assembly may still be pending)."""
        _write_atomically(self.directory / DONE_FILE, json.dumps({"rows": rows}) + "\n")

    def done_rows(self) -> int:
        return int(json.loads((self.directory / DONE_FILE).read_text())["rows"])

    def writer(self, first: int, schema: pa.Schema) -> PartWriter:
        return PartWriter(self.directory, first, schema)

    def assemble(self, schema: pa.Schema) -> None:
        """Concatenate the parts, in order, into OUT (atomically), then remove the store."""
        with AtomicParquetWriter(self.output, schema) as writer:
            for part in self.parts():
                for batch in pq.ParquetFile(part.path).iter_batches():
                    writer.write(batch)
        self.remove()

    def publish_dataset(self) -> None:
        """Turn the store into OUT, a directory of Parquet parts (journal files removed)."""
        for name in (JOB_FILE, DONE_FILE):
            (self.directory / name).unlink(missing_ok=True)
        if self.output.exists():
            shutil.rmtree(self.output)
        os.replace(self.directory, self.output)

    def remove(self) -> None:
        """Delete the store, and the directories made for OUT if they are left empty."""
        shutil.rmtree(self.directory, ignore_errors=True)
        for directory in self.created:
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()

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
        path = self.directory / f"part-{self.first:08d}-{last:08d}.parquet"
        try:
            self.writer.close()
            _fsync(self.temporary)
            os.replace(self.temporary, path)
        except OSError as exc:
            raise os_error("writing", path, exc) from exc
        return Part(path, self.first, last)

    def discard(self) -> None:
        try:
            self.writer.close()
        finally:
            self.temporary.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    _fsync(temporary)
    os.replace(temporary, path)


def _shown(value: Any) -> str:
    """An option's recorded value as a user typed it; None is an option left at its default."""
    return "not given" if value is None else repr(value)
