"""Parquet in and out: resolving inputs, checking them up front, streaming, atomic writes."""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clsx.errors import ClsxError, os_error
from clsx.io import durable
from clsx.io.storage import Location, is_uri, local, location, one_line


@dataclass(frozen=True)
class ParquetInput:
    """Validated input files, read in this order, and the columns they share; ``root`` is
    the input as given (a file, a directory or a glob)."""

    files: tuple[Location, ...]
    schema: pa.Schema
    num_rows: int
    text_column: str
    root: Location


def resolve_inputs(spec: str | Path, storage_options: Sequence[str] = ()) -> list[Location]:
    """A Parquet file, a directory of ``*.parquet`` files, or a glob (local or a URI), as a
    sorted file list."""
    if not is_uri(spec):
        return [local(path) for path in _local_inputs(spec)]
    root = location(spec, storage_options)
    try:
        if glob.has_magic(root.path):
            # List from the deepest directory above the first wildcard.
            base = root.path[:re.search(r"[*?[]", root.path).start()].rsplit("/", 1)[0]
            shown = root.uri[:len(root.uri) - len(root.path) + len(base)]
            directory = replace(root, path=base, uri=shown)
            files = [f for f in directory.files(recursive=True)
                     if fnmatch.fnmatchcase(f.path, root.path)]
            if not files:
                raise ClsxError(f"input glob {spec} matches no file")
            return files
        if root.is_file():
            return [root]
        files = [f for f in root.files(recursive=True) if f.name.endswith(".parquet")]
        if not files:
            bucket = root.path.split("/", 1)[0]
            if not replace(root, path=bucket).exists():
                raise ClsxError(f"input {spec}: bucket {bucket} does not exist (or these "
                                "credentials cannot see it)")
            raise ClsxError(f"input {spec} does not exist (no file, and no directory "
                            "holding *.parquet files)")
    except OSError as exc:
        raise ClsxError(f"cannot read {root}: {one_line(exc)}") from exc
    return files


def _local_inputs(spec: str | Path) -> list[Path]:
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


def parquet_file(source: Location) -> pq.ParquetFile:
    """``source`` opened for reading (close it, or use it in a ``with``); on an object store
    each row group is fetched in a few coalesced requests."""
    return pq.ParquetFile(source.path, filesystem=source.filesystem,
                          pre_buffer=not source.is_local)


def is_text_type(arrow_type: pa.DataType) -> bool:
    """True for string columns, including large and dictionary-encoded ones."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or (
        hasattr(pa.types, "is_string_view") and pa.types.is_string_view(arrow_type)
    )


def open_input(
    spec: str | Path, text_column: str, keep_columns: Sequence[str] | None = None,
    storage_options: Sequence[str] = (),
) -> ParquetInput:
    """Check every input file's footer and columns before any work starts."""
    files = resolve_inputs(spec, storage_options)
    schema = None
    num_rows = 0
    for path in files:
        try:
            with parquet_file(path) as file:
                metadata, file_schema = file.metadata, file.schema_arrow
        except (OSError, pa.ArrowException) as exc:
            raise ClsxError(f"{path} is not a readable Parquet file ({one_line(exc)})") from exc
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
    root = location(spec, storage_options)
    return ParquetInput(tuple(files), schema, num_rows, text_column, root)


def iter_batches(source: ParquetInput, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Stream record batches of the kept columns plus the text column, file after file."""
    columns = list(dict.fromkeys([*source.schema.names, source.text_column]))
    for path in source.files:
        try:
            with parquet_file(path) as file:
                yield from file.iter_batches(batch_size=batch_rows, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            cause = "" if path.is_local else " or unreachable"
            raise ClsxError(f"reading {path} failed ({one_line(exc)}); the file is damaged"
                            f"{cause}") from exc


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


def check_output_location(output: Location, source: ParquetInput) -> None:
    """Refuse an OUT that is an input file or that a later run over the same input would
    read.

    That is OUT (or the part files kept beside it while it is written) inside an input
    directory or matching an input glob.
    """
    resolved = output.key()
    if any(path.key() == resolved for path in source.files):
        raise ClsxError(f"output {output} is also an input file; write it elsewhere")
    root = source.root
    if glob.has_magic(root.path):
        pattern = os.path.abspath(root.path) if root.is_local else root.uri
        part = f"{resolved}.parts/part-0.parquet"
        if fnmatch.fnmatch(resolved, pattern) or fnmatch.fnmatch(part, pattern):
            raise ClsxError(f"output {output} matches the input pattern {root}, so the next "
                            "run would read it as input; write it elsewhere")
    elif root.is_dir() and (resolved + "/").startswith(root.key().rstrip("/") + "/"):
        raise ClsxError(f"output {output} is inside the input directory {root}, so the next "
                        "run would read it as input; write it elsewhere")


class AtomicParquetWriter:
    """Writes to a hidden temporary file beside ``path`` and renames it only on success.

    On an exception (or Ctrl-C) the temporary file is removed and ``path`` is untouched, so a
    file at ``path`` is always complete. The file and the rename are on disk when the ``with``
    block ends (:func:`clsx.io.durable.rename`), so whatever is deleted after it (the parts it was
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
