"""Readers for the shared real datasets (../shared/datasets), turned into Parquet/JSONL.

The data stays where it is; these functions write temporary copies in the column layout
clsx expects (``text``, ``label``) for one benchmark run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATASETS = Path(os.environ.get("CLSX_DATASETS", Path(__file__).resolve().parents[2] /
                               "shared" / "datasets"))
LABEL_NAMES = {"0": "negative", "1": "positive"}


def sst2(split: str) -> pa.Table:
    """SST-2 sentences: ``split`` is train, dev or test; labels negative/positive."""
    path = DATASETS / "sst2_sentences" / f"stsa.binary.{split}"
    if not path.is_file():
        raise SystemExit(f"{path} not found: set CLSX_DATASETS to the shared datasets folder")
    lines = path.read_text(encoding="utf-8").splitlines()
    labels, texts = zip(*(line.split(" ", 1) for line in lines if line.strip()), strict=True)
    return pa.table({"text": list(texts), "label": [LABEL_NAMES[x] for x in labels]})


def repeated(table: pa.Table, rows: int) -> pa.Table:
    """``table`` repeated (and cut) to exactly ``rows`` rows, with an ``id`` column."""
    copies = -(-rows // table.num_rows)
    big = pa.concat_tables([table] * copies).slice(0, rows)
    return big.add_column(0, "id", pa.array(range(rows), pa.int64()))


def write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path, row_group_size=50_000)
    return path


def trec(split: str) -> pa.Table:
    """TREC question classification, coarse labels (6 classes); ``split`` train or test."""
    raw = (DATASETS / "trec_qc" / f"TREC.{split}").read_bytes().decode("latin-1")
    pairs = [line.split(" ", 1) for line in raw.splitlines() if line.strip()]
    return pa.table({"text": [q for _, q in pairs], "label": [t.split(":")[0] for t, _ in pairs]})


def disaster_tweets() -> pa.Table:
    """Disaster tweets (binary), the only labelled file: split it yourself."""
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(DATASETS / "disaster_tweets" / "train.csv")
    labels = ["disaster" if t else "other" for t in table["target"].to_pylist()]
    return pa.table({"text": table["text"], "label": labels})


def bbc_news() -> pa.Table:
    """BBC news articles (5 topics, long texts), one file: split it yourself."""
    import pyarrow.csv as pcsv

    # Articles keep their paragraphs: quoted values span lines.
    table = pcsv.read_csv(DATASETS / "bbc_news" / "bbc_fulltext.csv.gz",
                          parse_options=pcsv.ParseOptions(newlines_in_values=True))
    return pa.table({"text": table["text"], "label": table["label"]})


def goemotions(split: str) -> pa.Table:
    """GoEmotions, 28 labels, multi-label: ``label`` is a list of emotion names."""
    names = (DATASETS / "goemotions" / "emotions.txt").read_text().split()
    texts, labels = [], []
    for line in (DATASETS / "goemotions" / f"{split}.tsv").read_text(encoding="utf-8").split("\n"):
        if not line:
            continue
        text, ids, _ = line.split("\t")
        texts.append(text)
        labels.append([names[int(i)] for i in ids.split(",")])
    return pa.table({"text": texts, "label": labels})


def split_table(table: pa.Table, test_fraction: float, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """A fixed random train/test split for datasets shipped as one file."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(table.num_rows)
    cut = int(table.num_rows * (1 - test_fraction))
    return table.take(np.sort(order[:cut])), table.take(np.sort(order[cut:]))


def sample(table: pa.Table, rows: int | None, seed: int = 0) -> pa.Table:
    """At most ``rows`` rows, drawn at random with a fixed seed (order kept)."""
    import numpy as np

    if rows is None or rows >= table.num_rows:
        return table
    chosen = np.random.default_rng(seed).choice(table.num_rows, size=rows, replace=False)
    return table.take(np.sort(chosen))
