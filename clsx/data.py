"""Reading tabular text data (Parquet, CSV, JSON lines) with columns checked up front."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from clsx.errors import ClsxError
from clsx.parquet import is_text_type

SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a whole Parquet, CSV or JSON-lines file, naming the expected columns on failure."""
    path = Path(path)
    if not path.is_file():
        raise ClsxError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
        elif suffix in (".jsonl", ".json"):
            import pyarrow.json as pjson

            table = pjson.read_json(path)
        else:
            raise ClsxError(f"{path}: unknown data format {suffix!r}; use one of {SUFFIXES}")
    except (OSError, pa.ArrowException) as exc:
        raise ClsxError(f"cannot read {path} ({str(exc).splitlines()[0]})") from exc
    missing = [c for c in columns or [] if c not in table.column_names]
    if missing:
        raise ClsxError(
            f"{path} has no column {', '.join(map(repr, missing))}; its columns are "
            f"{', '.join(table.column_names)}"
        )
    return table


def read_texts(path: str | Path, text_column: str, limit: int | None = None) -> list[str | None]:
    """The text column of a data file as Python strings, at most ``limit`` rows."""
    table = read_table(path, [text_column])
    column = table.column(text_column)
    if not is_text_type(column.type):
        raise ClsxError(f"{path}: column {text_column!r} holds {column.type}, not text")
    if limit is not None:
        column = column.slice(0, limit)
    return column.cast(pa.string()).to_pylist()
