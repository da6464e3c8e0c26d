"""Distillation on real data: a SmolLM2-135M teacher's soft labels -> a MiniLM-L6 student.

(work in progress)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402

LABELLED_ROWS = 3000  # the teacher's labelled part: the rows of claim 1's SmolLM2 runs
READERS = {"sst2": realdata.sst2, "trec": realdata.trec}


def prepare(dataset: str, folder: Path) -> dict[str, Path]:
    """labelled.parquet (the claim-1 SmolLM2 sample of the training split), unlabelled.parquet
    (the rest of it, text only) and test.parquet in ``folder``."""
    train = READERS[dataset]("train")
    chosen = np.sort(np.random.default_rng(0).choice(train.num_rows, LABELLED_ROWS,
                                                     replace=False))
    rest = np.setdiff1d(np.arange(train.num_rows), chosen)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.parquet" for name in ("labelled", "unlabelled", "test")}
    pq.write_table(train.take(chosen), paths["labelled"])
    pq.write_table(train.take(rest).select(["text"]), paths["unlabelled"])
    pq.write_table(READERS[dataset]("test"), paths["test"])
    return paths


if __name__ == "__main__":
    prepare(sys.argv[1], Path(sys.argv[2]))
