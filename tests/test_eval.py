"""``clsx eval``: the --predictions and --errors tables, and --json, on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from clsx.artifacts.manifest import Manifest
from clsx.cli import main
from clsx.inference.decisions import MULTI, SINGLE
from clsx.quality.calibration import brier_score, expected_calibration_error
from clsx.quality.metrics import (
    multi_label_metrics,
    regression_metrics,
    scalar_metrics,
    single_label_metrics,
)
from clsx.testing.tiny_models import build_tiny_classifier
from tests.conftest import TEXTS, run_clsx, write_parquet

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


# --- eval and batch-predict decide alike ---------------------------------------------------

def _columns_metrics(table: pa.Table, problem_type: str, gold: list) -> dict[str, float]:
    """The metrics of batch-predict's output columns (``predicted_*``) against ``gold``,
    computed from those columns alone, as a user of OUT would."""
    if problem_type == "regression":
        return regression_metrics(np.array(gold, dtype=np.float64),
                                  table["predicted_score"].to_numpy().astype(np.float64))
    probs = np.array(table["predicted_probs"].to_pylist(), dtype=np.float64)
    if problem_type == MULTI:
        targets = np.array([[label in row.split(",") for label in LABELS] for row in gold])
        chosen = np.array([[label in row for label in LABELS]
                           for row in table["predicted_labels"].to_pylist()])
        metrics = multi_label_metrics(targets.astype(int), chosen.astype(int), LABELS)
        nll = -np.mean(np.where(targets, np.log(probs), np.log1p(-probs)))
    else:
        targets = np.array([LABELS.index(label) for label in gold])
        chosen = np.array([LABELS.index(label) for label in table["predicted_label"].to_pylist()])
        metrics = single_label_metrics(targets, chosen, LABELS)
        nll = -np.mean(np.log(probs[np.arange(len(probs)), targets]))
    return {**scalar_metrics(metrics), "nll": nll,
            "ece": expected_calibration_error(probs, targets, problem_type),
            "brier": brier_score(probs, targets, problem_type)}


@pytest.mark.parametrize("problem_type, temperatures, thresholds, options", [
    (SINGLE, (2.5,), None, ()),
    (MULTI, (0.4, 2.0, 3.0), (0.3, 0.6, 0.75), ()),
    (MULTI, (0.4, 2.0, 3.0), None, ("--tune-threshold",)),
    ("regression", None, None, ()),
], ids=["single-label", "multi-label", "multi-label-tuned", "regression"])
def test_eval_metrics_are_those_of_batch_predicts_columns(problem_type, temperatures,
                                                          thresholds, options, tmp_path,
                                                          fake_runner):
    """On the same rows, with a calibrated model (temperatures not 1), eval's metrics equal
    the metrics of the columns batch-predict writes: both decide with the calibrated
    probabilities, and eval's tuned threshold is the one batch-predict would then apply."""
    model = build_tiny_classifier(tmp_path / "model", "bert", problem_type=problem_type)
    Manifest.load(model).replace(temperatures=temperatures, thresholds=thresholds).save(model)
    texts = [f"review {i}: " + " ".join(TEXTS[i % len(TEXTS)].split()[: 2 + i % 7])
             for i in range(90)]
    gold = ([i % 5 / 2 for i in range(90)] if problem_type == "regression" else
            [LABELS[i % 3] for i in range(90)] if problem_type == SINGLE else
            [",".join(LABELS[j] for j in range(3) if (i * 5 // 3 >> j) & 1) for i in range(90)])
    data = write_parquet(tmp_path / "data.parquet", texts, label=gold)
    report = tmp_path / "metrics.json"
    evaluated = run_clsx("eval", "-m", model, "--data", data, "--json", report, *options)
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(report.read_text())
    threshold = ()
    if options:  # --tune-threshold: one threshold for every label, which OUT should apply
        (tuned,) = set(metrics["thresholds"].values())
        threshold = ("--threshold", tuned)
    out = tmp_path / "out.parquet"
    predicted = run_clsx("batch-predict", data, out, "-m", model, "--output-prefix",
                         "predicted_", *threshold)
    assert predicted.exit_code == 0, predicted.output
    expected = _columns_metrics(pq.read_table(out), problem_type, gold)
    assert {name: metrics[name] for name in expected} == pytest.approx(expected, rel=1e-4,
                                                                      nan_ok=True)
