"""``clsx eval``: metrics of a model on labelled data, and the rows it gets wrong.

Classifiers' metrics include how well their probabilities are calibrated: ``ece``,
``brier`` and ``nll`` at the model's temperatures, and the same of the raw softmax /
sigmoid as ``ece_uncalibrated``, ``brier_uncalibrated``, ``nll_uncalibrated``
(:mod:`clsx.quality.calibration`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clsx.artifacts.artifact import open_artifact
from clsx.artifacts.manifest import Manifest
from clsx.auto.resolve import classifier_for
from clsx.evaluation.config import EvalConfig
from clsx.inference.decisions import MULTI, DecisionRule
from clsx.inference.runners import RunnerOptions
from clsx.io import durable
from clsx.io.tables import LabelledData, read_labelled
from clsx.quality.calibration import before_and_after
from clsx.quality.metrics import compute_metrics, tune_threshold


@dataclass(frozen=True)
class EvalResult:
    """Metrics (flat scalars plus per-class and confusion entries) and the predictions.

    ``predictions`` holds the data's text and label columns (``config.text_column``,
    ``config.label_column``), the ``predicted_*`` columns and ``correct``; ``targets`` the
    gold labels as the model encodes them (label ids, multi-hot rows, or values), row for
    row. ``config`` and ``manifest`` say what was evaluated, for reports.
    """

    metrics: dict[str, Any]
    predictions: pa.Table
    targets: np.ndarray
    config: EvalConfig
    manifest: Manifest


def evaluate(config: EvalConfig) -> EvalResult:
    """Classify ``config.data`` with ``config.model`` and score the predictions against its
    labels (see :class:`~clsx.batch.config.EvalConfig` for the threshold and long-text options)."""
    artifact = open_artifact(config.model, allow_pickle=config.allow_pickle)
    manifest = artifact.manifest
    labelled = read_labelled(config.data, config.text_column, config.label_column,
                             manifest.problem_type, labels=manifest.labels,
                             separator=config.label_separator,
                             storage_options=config.storage_options)
    with classifier_for(artifact, config.backend, RunnerOptions(device=config.device),
                        long_text=config.long_text_override(),
                        threshold=config.threshold) as classifier:
        logits = classifier.predict_all(labelled.texts).logits
    return score(config, manifest, labelled, logits, classifier.rule)


def score(config: EvalConfig, manifest: Manifest, labelled: LabelledData, logits: np.ndarray,
          rule: DecisionRule) -> EvalResult:
    """Metrics and predictions of ``logits`` (one row per row of ``labelled``) under
    ``rule``, the model's decision rule (with ``config.tune_threshold``, re-tuned here)."""
    # Thresholds cut the calibrated probabilities, so they are tuned and applied on the
    # calibrated logits (a single-label argmax is the same either way).
    calibrated = rule.scaled(logits)
    if config.tune_threshold and manifest.problem_type == MULTI:
        rule = rule.with_threshold(tune_threshold(calibrated, labelled.targets))
    metrics = compute_metrics(calibrated, labelled.targets, manifest.problem_type,
                              manifest.labels, rule.cut)
    if rule.has_labels:
        metrics.update(before_and_after(logits, labelled.targets, manifest.problem_type,
                                        rule.temperatures))
    metrics["rows"] = len(labelled.texts)
    predictions = labelled.table.select([config.text_column, config.label_column])
    for name, column in rule.named_columns(logits).items():
        predictions = predictions.append_column(f"predicted_{name}", column)
    predictions = predictions.append_column("correct", pa.array(_correct(logits, labelled.targets,
                                                                         rule)))
    return EvalResult(metrics, predictions, labelled.targets, config, manifest)


def errors_table(predictions: pa.Table) -> pa.Table:
    """The misclassified rows, most confident first: the ones most likely mislabelled."""
    wrong = predictions.filter(pc.invert(predictions.column("correct")))
    order = pc.sort_indices(wrong, sort_keys=[("predicted_score", "descending")])
    return wrong.take(order).drop_columns(["correct"])


def write_json(metrics: dict[str, Any], path: Path) -> None:
    durable.write_file(path, json.dumps(metrics, indent=2, default=float) + "\n")


def _correct(logits: np.ndarray, targets: np.ndarray, rule: DecisionRule) -> np.ndarray:
    """Whether each row's decision equals its gold label (regression: always true)."""
    if not rule.has_labels:
        return np.ones(len(logits), dtype=bool)
    decided = rule.decide(logits)
    if rule.problem_type == MULTI:
        return (decided == targets.astype(bool)).all(axis=1)
    return decided == targets
