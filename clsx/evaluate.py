"""``clsx eval``: metrics of a model on labelled data, and the rows it gets wrong."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clsx.classifier import Classifier
from clsx.data import read_labelled
from clsx.decisions import MULTI, DecisionRule
from clsx.metrics import compute_metrics, tune_threshold
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

    ``long_text`` overrides the manifest's long-text setting (see
    :meth:`Classifier.from_artifact`). Multi-label rows are cut at ``threshold`` (None: the
    model's tuned per-label thresholds, else 0.5), or with ``tune`` at the one threshold that
    maximises macro-F1 on ``data``.
    """
    with Classifier.open(model, backend, options, allow_pickle=allow_pickle,
                         long_text=long_text, threshold=threshold) as classifier:
        manifest = classifier.manifest
        labelled = read_labelled(data, text_column, label_column, manifest.problem_type,
                                 labels=manifest.labels, separator=label_separator)
        logits = classifier.predict_all(labelled.texts).logits
    rule = classifier.rule
    if tune and manifest.problem_type == MULTI:
        rule = rule.with_threshold(tune_threshold(logits, labelled.targets))
    metrics = compute_metrics(logits, labelled.targets, manifest.problem_type,
                              manifest.labels, rule.cut)
    metrics["rows"] = len(labelled.texts)
    predictions = labelled.table.select([text_column, label_column])
    for name, column in rule.named_columns(logits).items():
        predictions = predictions.append_column(f"predicted_{name}", column)
    predictions = predictions.append_column("correct", pa.array(_correct(logits, labelled.targets,
                                                                         rule)))
    return EvalResult(metrics, predictions)


def errors_table(predictions: pa.Table) -> pa.Table:
    """The misclassified rows, most confident first: the ones most likely mislabelled."""
    wrong = predictions.filter(pc.invert(predictions.column("correct")))
    order = pc.sort_indices(wrong, sort_keys=[("predicted_score", "descending")])
    return wrong.take(order).drop_columns(["correct"])


def write_json(metrics: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(metrics, indent=2, default=float) + "\n")


def _correct(logits: np.ndarray, targets: np.ndarray, rule: DecisionRule) -> np.ndarray:
    """Whether each row's decision equals its gold label (regression: always true)."""
    if not rule.has_labels:
        return np.ones(len(logits), dtype=bool)
    decided = rule.decide(logits)
    if rule.problem_type == MULTI:
        return (decided == targets.astype(bool)).all(axis=1)
    return decided == targets
