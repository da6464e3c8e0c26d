"""Parquet in and out: resolving inputs, checking them up front, streaming, atomic writes."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clsx import durable
from clsx.errors import ClsxError, os_error


@dataclass(frozen=True)
class ParquetInput:
    """Validated input files, read in this order, and the columns they share."""

    files: tuple[Path, ...]
    schema: pa.Schema
    num_rows: int
    text_column: str


def resolve_inputs(spec: str | Path) -> list[Path]:
    """A Parquet file, a directory of ``*.parquet`` files, or a glob, as a sorted file list."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise ClsxError(f"input directory {path} holds no *.parquet files")
        return files
    if path.is_file():
        return [path]
    files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
    if not files:
        what = "glob" if glob.has_magic(str(spec)) else "file"
        raise ClsxError(f"input {what} {spec} matches no file")
    return files


def is_text_type(arrow_type: pa.DataType) -> bool:
    """True for string columns, including large and dictionary-encoded ones."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or (
        hasattr(pa.types, "is_string_view") and pa.types.is_string_view(arrow_type)
    )


def open_input(
    spec: str | Path, text_column: str, keep_columns: Sequence[str] | None = None
) -> ParquetInput:
    """Check every input file's footer and columns before any work starts."""
    files = resolve_inputs(spec)
    schema = None
    num_rows = 0
    for path in files:
        try:
            metadata = pq.read_metadata(path)
            file_schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise ClsxError(f"{path} is not a readable Parquet file ({exc})") from exc
        _check_columns(path, file_schema, text_column, keep_columns)
        wanted = _kept_names(file_schema, keep_columns)
        kept = pa.schema([file_schema.field(name) for name in wanted])
        if schema is None:
            schema = kept
        elif not kept.equals(schema):
            raise ClsxError(
                f"{path} has columns {kept.names} ({kept.types}) but {files[0]} has "
                f"{schema.names} ({schema.types}); all input files need the same kept columns"
            )
        num_rows += metadata.num_rows
    return ParquetInput(tuple(files), schema, num_rows, text_column)


def iter_batches(source: ParquetInput, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Stream record batches of the kept columns plus the text column, file after file."""
    columns = list(dict.fromkeys([*source.schema.names, source.text_column]))
    for path in source.files:
        try:
            yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise ClsxError(f"reading {path} failed ({exc}); the file is damaged") from exc


def text_values(batch: pa.RecordBatch, text_column: str) -> list[str | None]:
    """The text column of a record batch as Python strings."""
    return python_strings(batch.column(text_column), text_column)


def python_strings(column: pa.Array | pa.ChunkedArray, name: str) -> list[str | None]:
    """A text column (plain, large, view or dictionary-encoded) as Python strings.

    Text that is not valid UTF-8 (which Parquet writers should never produce) is an error
    naming the first bad row, rather than a decoding traceback.
    """
    column = column.cast(pa.string())
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        row = next(i for i in range(len(column)) if not _decodes(column[i]))
        raise ClsxError(
            f"column {name!r} holds text that is not valid UTF-8 (row {row} of the batch); "
            "repair the file, e.g. re-encode it with errors='replace'"
        ) from None


def _decodes(value: pa.Scalar) -> bool:
    try:
        value.as_py()
    except UnicodeDecodeError:
        return False
    return True


def check_output_location(output: Path, spec: str | Path, source: ParquetInput) -> None:
    """Refuse an OUT that is an input file or that a later run over ``spec`` would read.

    That is OUT (or the part files kept beside it while it is written) inside an input
    directory or matching an input glob.
    """
    resolved = output.resolve()
    if any(path.resolve() == resolved for path in source.files):
        raise ClsxError(f"output {output} is also an input file; write it elsewhere")
    spec_path = Path(spec)
    if spec_path.is_dir():
        if resolved.is_relative_to(spec_path.resolve()):
            raise ClsxError(f"output {output} is inside the input directory {spec}, so the next "
                            "run would read it as input; write it elsewhere")
    elif glob.has_magic(str(spec)):
        pattern = os.path.abspath(spec)
        part = resolved.with_name(f"{resolved.name}.parts") / "part-0.parquet"
        if fnmatch.fnmatch(str(resolved), pattern) or fnmatch.fnmatch(str(part), pattern):
            raise ClsxError(f"output {output} matches the input pattern {spec}, so the next run "
                            "would read it as input; write it elsewhere")


class AtomicParquetWriter:
    """Writes to a hidden temporary file beside ``path`` and renames it only on success.

    On an exception (or Ctrl-C) the temporary file is removed and ``path`` is untouched, so a
    file at ``path`` is always complete. The file and the rename are on disk when the ``with``
    block ends (:func:`clsx.durable.rename`), so whatever is deleted after it (the parts it was
    assembled from) is no longer needed.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.temporary = path.with_name(f".{path.name}.clsx-{os.getpid()}.tmp")
        self.writer: pq.ParquetWriter | None = None

    def __enter__(self) -> AtomicParquetWriter:
        try:
            durable.make_directory(self.path.parent)
            self.writer = pq.ParquetWriter(self.temporary, self.schema)
        except OSError as exc:
            raise os_error("writing", self.path, exc) from exc
        return self

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self.writer.write_batch(batch)
        except OSError as exc:
            raise os_error("writing", self.path, exc) from exc

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self.writer.close()
            if exc_type is None:
                durable.rename(self.temporary, self.path)
        except OSError as error:
            if exc_type is None:
                raise os_error("writing", self.path, error) from error
        finally:
            self.temporary.unlink(missing_ok=True)


def _kept_names(schema: pa.Schema, keep_columns: Sequence[str] | None) -> list[str]:
    return list(schema.names) if keep_columns is None else list(keep_columns)


def _check_columns(
    path: Path, schema: pa.Schema, text_column: str, keep_columns: Sequence[str] | None
) -> None:
    missing = [c for c in [text_column, *(keep_columns or [])] if c not in schema.names]
    if missing:
        raise ClsxError(
            f"{path} has no column {', '.join(map(repr, missing))}; its columns are "
            f"{', '.join(schema.names)} (choose one with --text-column)"
        )
    text_type = schema.field(text_column).type
    if not is_text_type(text_type):
        raise ClsxError(
            f"{path}: column {text_column!r} holds {text_type}, not text; "
            "cast it to string or pick another --text-column"
        )


def write_table(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` as one Parquet file, atomically and durably."""
    with AtomicParquetWriter(path, table.schema) as writer:
        for batch in table.to_batches():
            writer.write(batch)
