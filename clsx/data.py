"""Reading tabular text data (Parquet, CSV, JSON lines) with columns checked up front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from clsx.errors import ClsxError
from clsx.parquet import is_text_type, python_strings

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
    if limit is not None:
        table = table.slice(0, limit)
    return _strings(table, text_column, path)


@dataclass(frozen=True)
class LabelledData:
    """Texts with targets: label ids (single-label), multi-hot rows, or float values.

    ``labels`` is in label-id order; ``table`` is the source table, row for row.
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
) -> LabelledData:
    """Read texts and targets, deriving the label set unless ``labels`` is given.

    With ``labels`` (eval data for a trained model) a value outside them is an error that
    lists the unknown values.
    """
    table = read_table(path, [text_column, label_column])
    if table.num_rows == 0:
        raise ClsxError(f"{path} has 0 rows; it needs labelled examples")
    texts = _non_null_texts(table, text_column, path)
    values = table.column(label_column).to_pylist()
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
        return LabelledData(texts, targets, tuple(labels or ("value",)), table)
    if problem_type == "multi_label_classification":
        rows = [_split_labels(v, separator) for v in values]
        known = tuple(labels) if labels else tuple(sorted({x for row in rows for x in row}))
        _check_known(path, label_column, {x for row in rows for x in row}, known)
        index = {label: i for i, label in enumerate(known)}
        targets = np.zeros((len(rows), len(known)), dtype=np.float32)
        for r, row in enumerate(rows):
            targets[r, [index[x] for x in row]] = 1.0
        return LabelledData(texts, targets, known, table)
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
    return LabelledData(texts, np.array([index[s] for s in strings], dtype=np.int64), known, table)


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
