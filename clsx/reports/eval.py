"""The ``clsx eval --report`` page: what a model gets right and wrong, as pictures.

Single-label models get per-class bars, the confusion matrix, a reliability diagram of the
top label's probability and the most confident errors; multi-label models per-label bars
and a reliability diagram of every (row, label) probability; regression models a scatter
of predicted against true values and the largest errors.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from clsx import __version__
from clsx.artifacts.manifest import Manifest
from clsx.evaluation.evaluate import EvalResult, errors_table
from clsx.inference.decisions import MULTI, SINGLE
from clsx.quality.calibration import ECE_BINS, Reliability, reliability
from clsx.quality.metrics import scalar_metrics
from clsx.reports.page import (
    cards,
    figures,
    image,
    key_values,
    new_figure,
    note,
    number,
    page,
    section,
    table,
)

ERROR_ROWS = 20  # rows of the errors table: the page is for reading, --errors has them all
TEXT_CHARS = 400  # longer texts are cut in the errors table, which stays readable
LABEL_CHARS = 28  # longer labels are cut on the figures' axes
HEADLINE = ("accuracy", "subset_accuracy", "macro_f1", "micro_f1", "weighted_f1",
            "mse", "mae", "pearson", "spearman")


@dataclass(frozen=True)
class Calibration:
    """The probabilities a reliability diagram plots, their outcomes and their bins.

    ``per_label``: multi-label, one probability per (row, label) and whether the label is
    gold; else one per row, its top label's, and whether the row is right.
    """

    probability: np.ndarray
    outcome: np.ndarray
    bins: Reliability
    per_label: bool


def calibration(result: EvalResult) -> Calibration:
    """The calibration of a classifier's predictions (a sigmoid per label is a probability
    of its own, so multi-label models are judged label by label)."""
    predictions = result.predictions
    if result.manifest.problem_type == MULTI:
        # Row-major, like the (rows, labels) targets; eval texts are never null.
        flat = pc.list_flatten(predictions.column("predicted_probs"))
        probability = flat.to_numpy().astype(np.float64)
        outcome = result.targets.astype(bool).reshape(-1)
    else:
        probability = predictions.column("predicted_score").to_numpy(zero_copy_only=False)
        outcome = predictions.column("correct").to_numpy(zero_copy_only=False).astype(bool)
    return Calibration(probability, outcome, reliability(probability, outcome),
                       per_label=result.manifest.problem_type == MULTI)


def eval_report(result: EvalResult, context: Mapping[str, str]) -> str:
    """The HTML page of ``result``; ``context`` (command, time, machine, ...) is shown as
    given under "Run"."""
    problem = result.manifest.problem_type
    headline = {name.replace("_", " ").replace("f1", "F1"): number(value)
                for name, value in result.metrics.items() if name in HEADLINE}
    if problem == "regression":
        body = [section("Predicted vs true", figures(_scatter(result))),
                _largest_errors(result)]
    else:
        calibrated = calibration(result)
        headline[f"ECE ({ECE_BINS} bins)"] = number(calibrated.bins.ece)
        body = _classifier_sections(result, calibrated)
    headline["rows"] = number(result.metrics.get("rows", result.predictions.num_rows))
    run = {"model": str(result.config.model), "data": str(result.config.data),
           "backend": result.config.backend, **context, "clsx": __version__}
    sections = [
        section("Headline", cards(headline)),
        *body,
        section("All metrics", key_values(scalar_metrics(result.metrics))),
        section("Run", key_values(run)),
        _model_section(result.manifest),
    ]
    title = f"clsx eval: {result.config.model.name or result.config.model}"
    kind = {SINGLE: "single-label classifier", MULTI: "multi-label classifier"}.get(
        problem, "regression model")
    return page(title, f"{kind} on {result.config.data}", sections)


def _classifier_sections(result: EvalResult, calibrated: Calibration) -> list[str]:
    """Per-class bars, confusion matrix (single-label), calibration and errors."""
    single = result.manifest.problem_type == SINGLE
    parts = [section(f"Per-{'class' if single else 'label'} precision, recall and F1",
                     *_per_class(result.metrics))]
    if single and "confusion_matrix" in result.metrics:
        parts.append(section("Confusion matrix",
                             note("Rows: gold label; columns: predicted label. Colour: share "
                                  "of the gold label's rows; numbers: rows."),
                             figures(_confusion(result.metrics["confusion_matrix"]))))
    return [*parts, _calibration_section(calibrated), _confident_errors(result)]


def _per_class(metrics: dict[str, Any]) -> list[str]:
    """Grouped horizontal bars of precision, recall and F1 per label, and the table."""
    per_class: dict[str, dict[str, float]] = metrics.get("per_class") or {}
    if not per_class:
        return [note("No per-class figures in the metrics.")]
    labels = list(per_class)
    kinds = (("precision", "#4c78a8"), ("recall", "#f58518"), ("f1-score", "#54a24b"))
    figure, axes = new_figure(8.5, 0.42 * len(labels) + 1.2)
    positions = np.arange(len(labels))
    height = 0.8 / len(kinds)
    for offset, (kind, colour) in enumerate(kinds):
        axes.barh(positions + (offset - 1) * height, [per_class[label][kind] for label in labels],
                  height=height, color=colour, label="F1" if kind == "f1-score" else kind)
    axes.set_yticks(positions, [_axis_label(label) for label in labels])
    axes.invert_yaxis()  # the first label on top, as in the table
    axes.set_xlim(0, 1)
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, frameon=False)
    rows = [(label, per_class[label]["precision"], per_class[label]["recall"],
             per_class[label]["f1-score"], int(per_class[label]["support"]))
            for label in labels]
    return [figures(image(figure, "precision, recall and F1 per label")),
            table(("label", "precision", "recall", "F1", "support"), rows)]


def _confusion(confusion: dict[str, Any]) -> str:
    """The confusion matrix as a heatmap: colour by share of each gold row, counts written
    in the cells while there are few enough labels to read them."""
    labels, matrix = confusion["labels"], np.asarray(confusion["matrix"], dtype=np.int64)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(max(3.5, 0.55 * len(labels) + 2.0), 12.0)
    figure, axes = new_figure(side + 1.2, side)
    shown = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(shown, ax=axes, shrink=0.8, label="share of gold row")
    names = [_axis_label(label) for label in labels]
    axes.set_xticks(range(len(labels)), names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(len(labels)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    if len(labels) <= 20:
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center", fontsize=9,
                      color="white" if share[row, column] > 0.55 else "#1f2328")
    return image(figure, "confusion matrix heatmap")


def _calibration_section(calibrated: Calibration) -> str:
    """Reliability diagram and score histogram, side by side."""
    bins, probability, outcome = calibrated.bins, calibrated.probability, calibrated.outcome
    multi = calibrated.per_label
    observed = "share of labels that are gold" if multi else "accuracy"
    positive, negative = ("gold", "not gold") if multi else ("correct", "wrong")

    figure, axes = new_figure(4.6, 4.8)
    width = np.diff(bins.edges)
    filled = bins.counts > 0
    axes.bar(bins.edges[:-1][filled], bins.accuracy[filled], width=width[filled], align="edge",
             color="#4c78a8", edgecolor="white", label=observed)
    axes.plot([0, 1], [0, 1], linestyle="--", color="#888", label="perfect calibration")
    axes.plot(bins.confidence[filled], bins.accuracy[filled], "o", color="#e45756",
              markersize=4, label="bin mean confidence")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability" if multi else
             "confidence (top label's probability)", ylabel=observed,
             title=f"Reliability, ECE {bins.ece:.3f}")
    # Below the axes: any corner inside them hides bars of some model.
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8,
                frameon=False)
    diagram = image(figure, "reliability diagram")

    figure, axes = new_figure(4.6, 4.8)
    axes.hist([probability[outcome], probability[~outcome]], bins=bins.edges, stacked=True,
              color=["#54a24b", "#e45756"], label=[positive, negative])
    axes.set(xlim=(0, 1), xlabel="predicted probability" if multi else "score",
             ylabel="labels" if multi else "rows", title="Score histogram")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8,
                frameon=False)
    histogram = image(figure, "score histogram")
    explained = ("Every (row, label) pair: its sigmoid probability against whether the label "
                 "is gold." if multi else "Each row's top-label probability against whether "
                 "the predicted label is right.")
    return section("Calibration", note(f"{explained} {ECE_BINS} equal-width bins; a "
                                       "well-calibrated model's bars follow the diagonal."),
                   figures(diagram, histogram))


def _confident_errors(result: EvalResult) -> str:
    """The misclassified rows the model was surest of: the likeliest label mistakes."""
    errors = errors_table(result.predictions)
    config = result.config
    rows = [(_cell(row[config.text_column], TEXT_CHARS), _cell(row[config.label_column]),
             _cell(row["predicted_label"]), row["predicted_score"])
            for row in errors.slice(0, ERROR_ROWS).to_pylist()]
    if not rows:
        return section("Most confident errors", note("No misclassified rows."))
    return section(
        "Most confident errors",
        note(f"{min(ERROR_ROWS, errors.num_rows)} of {errors.num_rows} misclassified rows, most "
             "confident first (clsx eval --errors FILE writes them all)."),
        table(("text", "gold", "predicted", "score"), rows, text_columns=(0,)))


def _scatter(result: EvalResult) -> str:
    """Regression: predicted against true value, with the diagonal of perfect predictions."""
    gold, predicted = _regression_values(result)
    figure, axes = new_figure(5.2, 5.0)
    axes.scatter(gold, predicted, s=10, alpha=0.5, color="#4c78a8", edgecolors="none")
    low = float(min(gold.min(), predicted.min()))
    high = float(max(gold.max(), predicted.max()))
    axes.plot([low, high], [low, high], linestyle="--", color="#888", label="predicted = true")
    axes.set(xlabel="true value", ylabel="predicted value")
    axes.legend(loc="upper left", fontsize=8)
    return image(figure, "predicted vs true scatter")


def _largest_errors(result: EvalResult) -> str:
    """Regression: the rows furthest from their true value."""
    gold, predicted = _regression_values(result)
    gap = np.abs(predicted - gold)
    texts = result.predictions.column(result.config.text_column).to_pylist()
    rows = [(_cell(texts[i], TEXT_CHARS), gold[i], predicted[i], gap[i])
            for i in np.argsort(-gap, kind="stable")[:ERROR_ROWS]]
    return section("Largest errors", note("The rows furthest from their true value."),
                   table(("text", "true", "predicted", "|error|"), rows, text_columns=(0,)))


def _regression_values(result: EvalResult) -> tuple[np.ndarray, np.ndarray]:
    """Regression: the true and the predicted value of every row, as float64."""
    predicted = result.predictions.column("predicted_score").to_numpy(zero_copy_only=False)
    return result.targets.reshape(-1).astype(np.float64), predicted.astype(np.float64)


def _model_section(manifest: Manifest) -> str:
    """What the model is (manifest), how it was trained and how its export compared."""
    thresholds = (dict(zip(manifest.labels, manifest.thresholds, strict=True))
                  if manifest.thresholds else None)
    facts = {"base model": manifest.base_model, "family": manifest.family,
             "format": manifest.format, "problem type": manifest.problem_type,
             "labels": ", ".join(manifest.labels), "max length": manifest.max_length,
             "template": manifest.template, "long text": _cell(manifest.long_text),
             "thresholds": thresholds, "exported from": manifest.parent}
    parts = [key_values({name: _cell(value) for name, value in facts.items()
                         if value is not None})]
    if manifest.training:
        parts += ["<h3>Training settings</h3>", key_values(
            {name: _cell(value) for name, value in manifest.training.items()
             if value is not None})]
    if manifest.parity:
        columns = sorted({key for figures_ in manifest.parity.values() for key in figures_})
        parts += ["<h3>Export parity against PyTorch fp32</h3>", table(
            ("check", *columns),
            [(name, *(figures_.get(key) for key in columns))
             for name, figures_ in manifest.parity.items()])]
    return section("Model", *parts)


def _cell(value: Any, limit: int | None = None) -> str:
    """A value from data or the manifest as one line of text: lists joined, mappings and
    other objects as compact JSON, long text cut at ``limit`` characters."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        text = ", ".join(map(str, value))
    elif isinstance(value, str):
        text = value
    elif isinstance(value, (int, float)):
        text = number(value)
    else:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        text = json.dumps(value, default=str, ensure_ascii=False)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _axis_label(label: str) -> str:
    """A label as a figure shows it: cut to fit, with ``$`` escaped (matplotlib would read
    ``$...$`` as mathematics and fail on a label like ``$5 off``)."""
    short = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"
    return short.replace("$", r"\$")
