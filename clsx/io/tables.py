"""Reading tabular text data (Parquet, CSV, JSON lines) with columns checked up front."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from clsx.errors import ClsxError
from clsx.io.parquet import is_text_type, parquet_file, python_strings
from clsx.io.storage import Location, location, one_line

SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
# Rows per Arrow batch when streaming a file: small enough that a limit stops soon after it
# is reached, large enough that per-batch overhead does not count.
BATCH_ROWS = 65_536


def read_table(path: str | Path, columns: Sequence[str] | None = None,
               limit: int | None = None, storage_options: Sequence[str] = ()) -> pa.Table:
    """The ``columns`` (all when None) of the first ``limit`` rows of a Parquet, CSV or
    JSON-lines file (a local path or an object-store URI), in the order asked for.

    Only those columns are decoded, and reading stops once ``limit`` rows are in, so a wide
    or long file costs what the rows used cost. A missing column is an error that names the
    file's columns.
    """
    path = location(path, storage_options)
    try:
        found = path.is_file()
    except OSError as exc:
        raise ClsxError(f"cannot read {path} ({one_line(exc)})") from exc
    if not found:
        raise ClsxError(f"data file {path} does not exist")
    readers = {".parquet": _read_parquet, ".csv": _read_csv, ".jsonl": _read_json_lines,
               ".json": _read_json_lines}
    suffix = PurePosixPath(path.path).suffix.lower()
    if suffix not in readers:
        raise ClsxError(f"{path}: unknown data format {suffix!r}; use one of {SUFFIXES}")
    # The text and the label may be one column; Arrow readers refuse a name asked twice.
    wanted = None if columns is None else list(dict.fromkeys(columns))
    if limit is not None and limit < 0:
        raise ClsxError(f"a row limit must be >= 0, got {limit}")
    try:
        return readers[suffix](path, wanted, limit)
    except (OSError, pa.ArrowException) as exc:
        raise ClsxError(f"cannot read {path} ({str(exc).splitlines()[0]})") from exc


def _check_columns(path: Location, wanted: list[str] | None, found: Sequence[str]) -> None:
    """Refuse a file that lacks a wanted column, naming the columns it has."""
    missing = [c for c in wanted or [] if c not in found]
    if missing:
        raise ClsxError(
            f"{path} has no column {', '.join(map(repr, missing))}; its columns are "
            f"{', '.join(found) or '(none)'}"
        )


def _first_rows(batches: Iterable[pa.RecordBatch], schema: pa.Schema, limit: int | None
                ) -> pa.Table:
    """The batches' rows up to ``limit``; the batches after it are never pulled (read)."""
    if limit == 0:
        return schema.empty_table()
    kept: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        kept.append(batch)
        rows += batch.num_rows
        if limit is not None and rows >= limit:
            break
    table = pa.Table.from_batches(kept) if kept else schema.empty_table()
    return table if limit is None else table.slice(0, limit)


def _read_parquet(path: Location, columns: list[str] | None, limit: int | None) -> pa.Table:
    with parquet_file(path) as file:
        schema = file.schema_arrow
        _check_columns(path, columns, schema.names)
        if columns is not None:
            schema = pa.schema([schema.field(name) for name in columns])
        batch_size = BATCH_ROWS if limit is None else max(1, min(limit, BATCH_ROWS))
        table = _first_rows(file.iter_batches(batch_size=batch_size, columns=columns), schema,
                            limit)
    # Batches come in the file's column order; callers get the order they asked for.
    return table if columns is None else table.select(columns)


def _read_csv(path: Location, columns: list[str] | None, limit: int | None) -> pa.Table:
    import pyarrow.csv as pcsv

    # Columns left out are split off but never converted (no type inference, no copies).
    convert = pcsv.ConvertOptions(include_columns=columns or [])
    try:
        if limit is None:
            return pcsv.read_csv(path.open(), convert_options=convert)
        reader = pcsv.open_csv(path.open(), convert_options=convert)
    except pa.ArrowKeyError:  # a missing column: say which ones the header has
        _check_columns(path, columns, pcsv.open_csv(path.open()).schema.names)
        raise
    try:
        return _first_rows(reader, reader.schema, limit)
    except pa.ArrowInvalid:
        # The streaming reader fixes each column's type from the first block, so a later
        # value that does not fit (whole numbers, then 1.5) stops it; the whole-file reader
        # widens the type instead, as it did before streaming.
        return pcsv.read_csv(path.open(), convert_options=convert).slice(0, limit)


def _read_json_lines(path: Location, columns: list[str] | None, limit: int | None) -> pa.Table:
    """One JSON object per line, parsed in Python.

    pyarrow's streaming JSON reader cannot leave columns out, and it fixes every column's
    type from the first block: a field that is null there and text later (in a column
    nobody asked for) fails the whole read. Here only the wanted fields are kept, and each
    column's type is inferred from all of its kept values.
    """
    found: dict[str, None] = {}  # every field seen, in first-seen order (for the error)
    rows: list[dict[str, Any]] = []
    try:
        with io.TextIOWrapper(path.open(), encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if limit is not None and len(rows) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ClsxError(f"cannot read {path} (line {number} is not JSON: "
                                    f"{exc.msg})") from exc
                if not isinstance(row, dict):
                    raise ClsxError(f"cannot read {path} (line {number} is not a JSON object; "
                                    "write one object per line)")
                found.update(dict.fromkeys(row))
                rows.append(row if columns is None else
                            {name: row[name] for name in columns if name in row})
    except UnicodeDecodeError as exc:
        raise ClsxError(f"cannot read {path} (not UTF-8: {exc.reason} at byte "
                        f"{exc.start})") from exc
    _check_columns(path, columns, list(found))
    table = {}
    for name in list(found) if columns is None else columns:
        try:
            table[name] = pa.array([row.get(name) for row in rows])
        except UnicodeEncodeError as exc:  # JSON allows "\ud800"; UTF-8 (and Arrow) do not
            raise ClsxError(f"cannot read {path} (column {name!r} holds an unpaired surrogate "
                            f"escape such as \\ud800: {exc.reason})") from exc
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ClsxError(f"{path}: column {name!r} mixes value types "
                            f"({str(exc).splitlines()[0]})") from exc
    return pa.table(table)


def read_texts(path: str | Path, text_column: str, limit: int | None = None,
               storage_options: Sequence[str] = ()) -> list[str | None]:
    """The text column of a data file as Python strings, at most ``limit`` rows."""
    return _strings(read_table(path, [text_column], limit, storage_options), text_column, path)


@dataclass(frozen=True)
class LabelledData:
    """Texts with targets: label ids (single-label), multi-hot rows, or float values.

    ``labels`` is in label-id order; ``table`` holds the source's text and label columns,
    row for row.
    """

    texts: list[str]
    targets: np.ndarray
    labels: tuple[str, ...]
    table: pa.Table


def read_labelled(
    path: str | Path,
    text_column: str,
    label_column: str,
    problem_type: str,
    labels: Sequence[str] | None = None,
    separator: str = ",",
    storage_options: Sequence[str] = (),
) -> LabelledData:
    """Read texts and targets, deriving the label set unless ``labels`` is given.

    With ``labels`` (eval data for a trained model) a value outside them is an error that
    lists the unknown values.
    """
    table = read_table(path, [text_column, label_column], storage_options=storage_options)
    if table.num_rows == 0:
        raise ClsxError(f"{path} has 0 rows; it needs labelled examples")
    texts = _non_null_texts(table, text_column, path)
    targets, known = encode_targets(table.column(label_column).to_pylist(), problem_type,
                                    path, label_column, labels, separator)
    return LabelledData(texts, targets, known, table)


def encode_targets(values: list[Any], problem_type: str, path: str | Path, label_column: str,
                   labels: Sequence[str] | None = None, separator: str = ","
                   ) -> tuple[np.ndarray, tuple[str, ...]]:
    """A label column's ``values`` as targets (label ids, multi-hot rows or float values)
    and the label set (``labels`` where given, else derived); an empty value, a
    non-numeric regression value or a label outside ``labels`` is refused in one line."""
    nulls = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and v != v)]
    if nulls:
        raise ClsxError(
            f"{path}: {len(nulls)} rows have no {label_column!r} value (NaN or null; first at "
            f"row {nulls[0]}); drop or fill them"
        )
    if problem_type == "regression":
        try:
            targets = np.array(values, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ClsxError(f"{path}: regression column {label_column!r} is not numeric") from exc
        return targets, tuple(labels or ("value",))
    if problem_type == "multi_label_classification":
        rows = [_split_labels(v, separator) for v in values]
        known = tuple(labels) if labels else tuple(sorted({x for row in rows for x in row}))
        _check_known(path, label_column, {x for row in rows for x in row}, known)
        index = {label: i for i, label in enumerate(known)}
        targets = np.zeros((len(rows), len(known)), dtype=np.float32)
        for r, row in enumerate(rows):
            targets[r, [index[x] for x in row]] = 1.0
        return targets, known
    strings = [str(v) for v in values]
    if labels:
        known = tuple(labels)
    else:
        unique = set(values)
        ordered = sorted(unique) if all(isinstance(v, int) for v in unique) else sorted(
            unique, key=str)
        known = tuple(str(v) for v in ordered)
    _check_known(path, label_column, set(strings), known)
    index = {label: i for i, label in enumerate(known)}
    return np.array([index[s] for s in strings], dtype=np.int64), known


def _non_null_texts(table: pa.Table, text_column: str, path: str | Path) -> list[str]:
    """The text column of ``table``, refusing non-text types and null texts."""
    texts = _strings(table, text_column, path)
    missing = [i for i, text in enumerate(texts) if text is None]
    if missing:
        raise ClsxError(
            f"{path}: {len(missing)} rows have a null {text_column!r} (first at row "
            f"{missing[0]}); drop them"
        )
    return texts


def _strings(table: pa.Table, column_name: str, path: str | Path) -> list[str | None]:
    """A text column as Python strings (dictionary-encoded decoded); other types refused."""
    column = table.column(column_name)
    if not is_text_type(column.type):
        raise ClsxError(f"{path}: column {column_name!r} holds {column.type}, not text")
    try:
        return python_strings(column, column_name)
    except ClsxError as exc:
        raise ClsxError(f"{path}: {exc}") from None


def _split_labels(value: object, separator: str) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(x) for x in value]
    return [part.strip() for part in str(value).split(separator) if part.strip()]


def _check_known(path, column: str, found: set[str], known: Sequence[str]) -> None:
    unknown = sorted(found - set(known))
    if unknown:
        raise ClsxError(
            f"{path}: column {column!r} has labels the model does not know: "
            f"{', '.join(map(repr, unknown[:10]))}; known labels: {', '.join(known)}"
        )
