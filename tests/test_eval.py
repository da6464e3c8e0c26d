"""``clsx eval``: the --predictions and --errors tables, and --json, on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from clsx.cli import main
from tests.conftest import TEXTS

LABELS = ["negative", "neutral", "positive"]  # the tiny models' labels


def test_predictions_and_errors_tables(tiny_models, tmp_path):
    texts = [text for text in TEXTS if text.strip()] * 3  # 18 rows
    data = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts,
                             "label": [LABELS[i % 3] for i in range(len(texts))]}), data)
    paths = {name: tmp_path / f"{name}.{kind}" for name, kind in
             [("predictions", "parquet"), ("errors", "parquet"), ("json", "json")]}
    result = CliRunner().invoke(main, [
        "eval", "-m", str(tiny_models["bert"]), "--data", str(data), "--backend", "torch",
        *(arg for name, path in paths.items() for arg in (f"--{name}", str(path)))])
    assert result.exit_code == 0, result.output

    predictions = pq.read_table(paths["predictions"])
    assert predictions.num_rows == len(texts)
    assert {"text", "label", "predicted_label", "predicted_score", "predicted_probs",
            "correct"} <= set(predictions.column_names)
    rows = predictions.to_pylist()
    assert [row["text"] for row in rows] == texts  # one row per input, in input order
    for row in rows:
        assert row["correct"] == (row["predicted_label"] == row["label"])
        probs = row["predicted_probs"]
        assert len(probs) == len(LABELS) and abs(sum(probs) - 1) < 1e-5
        assert row["predicted_score"] == max(probs)
        assert row["predicted_label"] == LABELS[int(np.argmax(probs))]
    wrong = [row for row in rows if not row["correct"]]
    assert 0 < len(wrong) < len(rows)  # the random model gets some right and some wrong

    errors = pq.read_table(paths["errors"])
    assert "correct" not in errors.column_names
    assert errors.column_names == [c for c in predictions.column_names if c != "correct"]
    scores = errors.column("predicted_score").to_pylist()
    assert scores == sorted(scores, reverse=True)
    # Exactly the wrong rows (texts repeat, so compare whole rows as multisets).
    expected = sorted((r["text"], r["label"], r["predicted_label"]) for r in wrong)
    assert sorted((r["text"], r["label"], r["predicted_label"])
                  for r in errors.to_pylist()) == expected

    metrics = json.loads(paths["json"].read_text())
    correct = predictions.column("correct").to_pylist()
    assert metrics["accuracy"] == pytest.approx(sum(correct) / len(correct), abs=1e-12)
    assert metrics["rows"] == len(texts)
