"""Reading data files: only the needed columns are decoded, and a row limit stops the read.

Both are checked by damaging the parts of a file that must not be read: a read that touched
them would fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from clsx.errors import ClsxError
from clsx.io.tables import read_labelled, read_table, read_texts

ROWS = 1000
ROW_GROUP = 100


def damage_column_chunk(path: Path, row_group: int, column: str) -> None:
    """Overwrite one column chunk of a Parquet file with bytes no reader can decode."""
    metadata = pq.ParquetFile(path).metadata
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    chunk = metadata.row_group(row_group).column(names.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else (
        chunk.data_page_offset)
    with path.open("r+b") as file:
        file.seek(start)
        file.write(b"\xff" * chunk.total_compressed_size)


@pytest.fixture
def wide_parquet(tmp_path) -> Path:
    """1000 rows in 10 row groups: text, label and a big column nobody asks for."""
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({
        "big": ["x" * 2000 + str(i) for i in range(ROWS)],
        "text": [f"text {i}" for i in range(ROWS)],
        "label": [["neg", "pos"][i % 2] for i in range(ROWS)],
    }), path, row_group_size=ROW_GROUP)
    return path


def test_parquet_reads_only_the_needed_columns(wide_parquet):
    for row_group in range(ROWS // ROW_GROUP):
        damage_column_chunk(wide_parquet, row_group, "big")
    with pytest.raises(OSError):
        pq.read_table(wide_parquet)  # the damage is real
    data = read_labelled(wide_parquet, "text", "label", "single_label_classification")
    assert data.table.column_names == ["text", "label"]
    assert data.texts[-1] == "text 999" and data.labels == ("neg", "pos")
    # The order asked for, not the file's; one column asked twice is read once.
    assert read_table(wide_parquet, ["label", "text"]).column_names == ["label", "text"]
    assert read_table(wide_parquet, ["text", "text"]).column_names == ["text"]


def test_parquet_limit_stops_within_the_row_groups_it_needs(wide_parquet):
    for row_group in range(2, ROWS // ROW_GROUP):
        damage_column_chunk(wide_parquet, row_group, "text")
    texts = read_texts(wide_parquet, "text", limit=150)
    assert texts == [f"text {i}" for i in range(150)]
    assert read_texts(wide_parquet, "text", limit=0) == []
    with pytest.raises(ClsxError, match="cannot read"):
        read_texts(wide_parquet, "text", limit=250)
    with pytest.raises(ClsxError, match="cannot read"):
        read_texts(wide_parquet, "text")


def write_csv(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_csv_limit_stops_before_a_broken_line(tmp_path):
    # 3 MB of good rows (the streaming reader's blocks are 1 MB), then a row with too many
    # fields, which fails any read that reaches it.
    good = [f"text {i},{i % 2},{'y' * 80}" for i in range(30_000)]
    path = write_csv(tmp_path / "data.csv", "text,label,big", [*good, "a,b,c,d,e"])
    with pytest.raises(pa.ArrowInvalid):
        pcsv.read_csv(path)
    assert read_texts(path, "text", limit=5) == [f"text {i}" for i in range(5)]
    table = read_table(path, ["label", "text"], limit=100)
    assert table.column_names == ["label", "text"] and table.num_rows == 100
    with pytest.raises(ClsxError, match="cannot read"):
        read_texts(path, "text")


def test_csv_types_widen_past_the_first_block(tmp_path):
    """Whole numbers for 3 MB, then 1.5: the limited (streaming) read still gives doubles."""
    lines = [f"text {i},{i % 3}" for i in range(300_000)] + ["last,1.5"]
    path = write_csv(tmp_path / "data.csv", "text,value", lines)
    table = read_table(path, ["text", "value"], limit=len(lines))
    assert table.column("value").type == pa.float64() and table.num_rows == len(lines)
    assert table.column("value")[-1].as_py() == 1.5


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_json_lines_projection_and_limit(tmp_path):
    # 'extra' is null, then text, then a number: pyarrow's JSON reader fails on such a
    # column even when nobody asks for it.
    rows = [{"text": f"t{i}", "label": ["a", "b"][i % 2],
             "extra": None if i < 3000 else ("s" if i < 4000 else 1)} for i in range(5000)]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with path.open("a") as file:
        file.write("{not json\n")
    assert read_texts(path, "text", limit=3) == ["t0", "t1", "t2"]
    table = read_table(path, ["label", "text"], limit=5000)
    assert table.column_names == ["label", "text"] and table.num_rows == 5000
    with pytest.raises(ClsxError, match="line 5001 is not JSON"):
        read_texts(path, "text")


def test_json_lines_values(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [
        {"text": "a", "label": ["x", "y"], "n": 1},
        {"label": ["y"], "text": "b", "n": 2.5},
        {"text": "c", "label": [], "n": None},
    ])
    table = read_table(path, ["text", "label", "n"])
    assert table.column("n").to_pylist() == [1.0, 2.5, None]
    data = read_labelled(path, "text", "label", "multi_label_classification")
    assert data.texts == ["a", "b", "c"] and data.labels == ("x", "y")
    assert data.targets.tolist() == [[1, 1], [0, 1], [0, 0]]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a"}, {"text": 1}])
    with pytest.raises(ClsxError, match="column 'text' mixes value types"):
        read_texts(bad, "text")


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_missing_columns_name_the_ones_found(suffix, tmp_path):
    path = tmp_path / f"data{suffix}"
    table = pa.table({"text": ["a", "b"], "y": ["p", "q"]})
    if suffix == ".parquet":
        pq.write_table(table, path)
    elif suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        write_jsonl(path, table.to_pylist())
    for limit in (None, 1):
        with pytest.raises(ClsxError) as error:
            read_table(path, ["text", "label", "body"], limit)
        assert str(error.value) == (
            f"{path} has no column 'label', 'body'; its columns are text, y")
    with pytest.raises(ClsxError, match="has no column 'label'; its columns are text, y"):
        read_labelled(path, "text", "label", "single_label_classification")
