"""``clsx eval``: metrics of a model on labelled data, and the rows it gets wrong."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clsx import durable
from clsx.data import read_labelled
from clsx.metrics import compute_metrics, tune_threshold
from clsx.pipeline import Pipeline
from clsx.postprocess import prediction_columns
from clsx.runners import RunnerOptions


@dataclass(frozen=True)
class EvalResult:
    """Metrics (flat scalars plus per-class and confusion entries) and the predictions."""

    metrics: dict[str, Any]
    predictions: pa.Table


def evaluate(
    model: Path,
    data: Path,
    text_column: str = "text",
    label_column: str = "label",
    backend: str = "auto",
    threshold: float | None = None,
    tune: bool = False,
    label_separator: str = ",",
    options: RunnerOptions | None = None,
    allow_pickle: bool = False,
    long_text: dict[str, Any] | None = None,
) -> EvalResult:
    """Classify ``data`` with ``model`` and score the predictions against its labels.

    ``long_text`` overrides the manifest's long-text setting (see :meth:`Pipeline.open`).
    Multi-label rows are cut at ``threshold`` (None: the model's tuned per-label thresholds,
    else 0.5), or with ``tune`` at the one threshold that maximises macro-F1 on ``data``.
    """
    pipeline = Pipeline.open(model, backend, options, allow_pickle=allow_pickle,
                             long_text=long_text)
    manifest = pipeline.artifact.manifest
    labelled = read_labelled(data, text_column, label_column, manifest.problem_type,
                             labels=manifest.labels, separator=label_separator)
    logits = pipeline.classify(labelled.texts)
    if tune and manifest.problem_type == "multi_label_classification":
        threshold = tune_threshold(logits, labelled.targets)
    cut = manifest.decision_thresholds(threshold)
    metrics = compute_metrics(logits, labelled.targets, manifest.problem_type,
                              manifest.labels, cut)
    metrics["rows"] = len(labelled.texts)
    columns = prediction_columns(logits, manifest, threshold)
    predictions = labelled.table.select([text_column, label_column])
    for name, column in columns.items():
        predictions = predictions.append_column(f"predicted_{name}", column)
    correct = _correct(logits, labelled.targets, manifest.problem_type, cut)
    predictions = predictions.append_column("correct", pa.array(correct))
    return EvalResult(metrics, predictions)


def errors_table(predictions: pa.Table) -> pa.Table:
    """The misclassified rows, most confident first: the ones most likely mislabelled."""
    wrong = predictions.filter(pc.invert(predictions.column("correct")))
    order = pc.sort_indices(wrong, sort_keys=[("predicted_score", "descending")])
    return wrong.take(order).drop_columns(["correct"])


def write_json(metrics: dict[str, Any], path: Path) -> None:
    durable.write_file(path, json.dumps(metrics, indent=2, default=float) + "\n")


def _correct(logits: np.ndarray, targets: np.ndarray, problem_type: str,
             threshold: float | np.ndarray) -> np.ndarray:
    if problem_type == "regression":
        return np.ones(len(logits), dtype=bool)
    if problem_type == "multi_label_classification":
        from clsx.postprocess import probabilities

        predicted = probabilities(logits, problem_type) >= threshold
        return (predicted == targets.astype(bool)).all(axis=1)
    return logits.argmax(axis=1) == targets
