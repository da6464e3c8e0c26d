"""Classification and regression metrics (scikit-learn), shared by training and ``clsx eval``.

Scalar metrics are flat keys (``accuracy``, ``macro_f1``, ...); the per-class report and the
confusion matrix sit beside them under ``per_class`` and ``confusion_matrix``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clsx.inference.decisions import probabilities


def single_label_metrics(gold: np.ndarray, predicted: np.ndarray, labels: Sequence[str]
                         ) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 (micro, macro, weighted), per class, confusion matrix."""
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    ids = list(range(len(labels)))
    metrics: dict[str, Any] = {"accuracy": float(accuracy_score(gold, predicted))}
    for average in ("micro", "macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            gold, predicted, labels=ids, average=average, zero_division=0
        )
        metrics.update({f"{average}_precision": float(precision),
                        f"{average}_recall": float(recall), f"{average}_f1": float(f1)})
    report = classification_report(gold, predicted, labels=ids, target_names=list(labels),
                                   output_dict=True, zero_division=0)
    metrics["per_class"] = {label: report[label] for label in labels}
    metrics["confusion_matrix"] = {
        "labels": list(labels),
        "matrix": confusion_matrix(gold, predicted, labels=ids).tolist(),
    }
    return metrics


def multi_label_metrics(gold: np.ndarray, predicted: np.ndarray, labels: Sequence[str]
                        ) -> dict[str, Any]:
    """Micro/macro F1, subset accuracy and per-label scores for multi-hot arrays."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, average=None, zero_division=0
    )
    return {
        "subset_accuracy": float(accuracy_score(gold, predicted)),
        "micro_f1": float(f1_score(gold, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, predicted, average="weighted", zero_division=0)),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1-score": float(f),
                    "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
    }


def regression_metrics(gold: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """MSE, MAE, Pearson and Spearman correlation."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    constant = np.ptp(gold) == 0 or np.ptp(predicted) == 0
    return {
        "mse": float(mean_squared_error(gold, predicted)),
        "mae": float(mean_absolute_error(gold, predicted)),
        "pearson": float("nan") if constant else float(pearsonr(gold, predicted)[0]),
        "spearman": float("nan") if constant else float(spearmanr(gold, predicted)[0]),
    }


def compute_metrics(logits: np.ndarray, gold: np.ndarray, problem_type: str,
                    labels: Sequence[str], threshold: float | np.ndarray = 0.5
                    ) -> dict[str, Any]:
    """All metrics for one problem type from raw logits and gold targets.

    A multi-label ``threshold`` is one cut-off or one per label.
    """
    if problem_type == "regression":
        return regression_metrics(gold.reshape(-1), logits.reshape(-1))
    if problem_type == "multi_label_classification":
        predicted = (probabilities(logits, problem_type) >= threshold).astype(int)
        cut = {"threshold": threshold} if np.isscalar(threshold) else {
            "thresholds": dict(zip(labels, np.asarray(threshold).tolist(), strict=True))}
        return {**multi_label_metrics(gold.astype(int), predicted, labels), **cut}
    return single_label_metrics(gold, logits.argmax(axis=1), labels)


THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)
# A label needs this many positive rows before it gets a threshold of its own; rarer labels
# keep the global one (a cut-off fitted to two examples is noise).
MIN_POSITIVES_PER_LABEL = 5


def _f1_per_label(probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """F1 of every label at every grid threshold: shape (thresholds, labels)."""
    predicted = probs[None] >= THRESHOLD_GRID[:, None, None]
    positive = gold.astype(bool)[None]
    true_pos = (predicted & positive).sum(axis=1)
    false_pos = (predicted & ~positive).sum(axis=1)
    false_neg = (~predicted & positive).sum(axis=1)
    return 2 * true_pos / np.maximum(2 * true_pos + false_pos + false_neg, 1)


def _best(f1: np.ndarray) -> float:
    """The grid threshold with the highest F1 (``f1``: one value per grid threshold); where
    several tie, the middle one. Where the rows separate cleanly, every threshold between
    the negatives and the positives ties, and the lowest of them (0.05) would put the cut-off
    against the negatives' edge: a few unseen rows, or a retrained model, would cross it."""
    tied = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(THRESHOLD_GRID[tied[len(tied) // 2]])


def tune_threshold(logits: np.ndarray, gold: np.ndarray) -> float:
    """The multi-label threshold in 0.05..0.95 that maximises macro-F1 on these rows (the
    middle of a tie, :func:`_best`)."""
    f1 = _f1_per_label(probabilities(logits, "multi_label_classification"), gold)
    return _best(f1.mean(axis=1))


def tune_thresholds(logits: np.ndarray, gold: np.ndarray) -> tuple[float, ...]:
    """One threshold per label (0.05..0.95), each maximising that label's F1 on these rows
    (the middle of a tie, :func:`_best`); labels with fewer than
    ``MIN_POSITIVES_PER_LABEL`` positives keep the best global one."""
    f1 = _f1_per_label(probabilities(logits, "multi_label_classification"), gold)
    best_global = _best(f1.mean(axis=1))
    own = np.array([_best(column) for column in f1.T])
    enough = gold.astype(bool).sum(axis=0) >= MIN_POSITIVES_PER_LABEL
    return tuple(float(t) for t in np.where(enough, own, best_global))


TIMING_KEYS = ("runtime", "samples_per_second", "steps_per_second", "step")


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the flat numeric metric entries (no per-class tables, no Trainer timings)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in TIMING_KEYS}


# Calibration measures (clsx.quality.calibration): eval reports each at the model's temperatures
# under its own name and for the raw softmax / sigmoid with this suffix.
CALIBRATION_MEASURES = {"ece": "ECE (15 bins)", "brier": "Brier score", "nll": "NLL"}
UNCALIBRATED = "_uncalibrated"


def format_calibration(before: dict[str, float], after: dict[str, float],
                       columns: tuple[str, str] = ("uncalibrated", "calibrated")) -> str:
    """A table of the calibration measures in ``before`` and ``after`` side by side."""
    lines = [f"{'calibration':<20} {columns[0]:<14} {columns[1]}"]
    lines += [f"{title:<20} {before[name]:<14.4f} {after[name]:.4f}"
              for name, title in CALIBRATION_MEASURES.items() if name in after]
    return "\n".join(lines)


def format_report(metrics: dict[str, Any]) -> str:
    """The metrics as a readable text block: scalars, calibration (before / after), per-class
    table, confusion matrix."""
    calibration = [name for name in CALIBRATION_MEASURES if f"{name}{UNCALIBRATED}" in metrics]
    scalars = {name: value for name, value in scalar_metrics(metrics).items()
               if name.removesuffix(UNCALIBRATED) not in calibration}
    lines = [f"{name:<20} {value}" if isinstance(value, int) else f"{name:<20} {value:.4f}"
             for name, value in scalars.items()]
    if calibration:
        before = {name: metrics[f"{name}{UNCALIBRATED}"] for name in calibration}
        lines += ["", format_calibration(before, {name: metrics[name] for name in calibration})]
    per_class = metrics.get("per_class")
    if per_class:
        width = max(12, *(len(label) for label in per_class))
        lines += ["", f"{'label':<{width}}  precision  recall  f1      support"]
        lines += [
            f"{label:<{width}}  {row['precision']:<9.4f}  {row['recall']:<6.4f}  "
            f"{row['f1-score']:<6.4f}  {int(row['support'])}"
            for label, row in per_class.items()
        ]
    confusion = metrics.get("confusion_matrix")
    if confusion:
        labels = confusion["labels"]
        width = max(8, *(len(label) for label in labels))
        lines += ["", "confusion matrix (rows: gold, columns: predicted)",
                  " " * width + "  " + "  ".join(f"{label:>{width}}" for label in labels)]
        lines += [
            f"{label:<{width}}  " + "  ".join(f"{count:>{width}}" for count in row)
            for label, row in zip(labels, confusion["matrix"], strict=True)
        ]
    return "\n".join(lines)
