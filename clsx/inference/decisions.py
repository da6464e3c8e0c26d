"""The decision rule: from logits to the labels users get, and to the output columns.

The meaning is the same for every backend, every gate and every report:
- single-label: ``probs`` = softmax, ``label`` = the most probable label, ``score`` its prob;
- multi-label: ``probs`` = per-label sigmoid; a label is predicted when its prob reaches its
  threshold (the model's tuned per-label thresholds, a ``--threshold`` for all, else 0.5);
  ``labels`` lists them, ``label`` joins them with ``,`` (empty when none), ``score`` = the
  highest prob;
- regression: ``probs`` = [value], ``label`` null, ``score`` = the predicted value.
Rows whose logits are NaN (null input text) get null in every column.

A calibrated model (``temperatures`` in its manifest, see :mod:`clsx.quality.calibration`) has its
logits divided by them first: softmax(logits / T), sigmoid(logit_j / T_j). That changes
``probs``, ``score`` and multi-label decisions, never a single-label argmax.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from clsx.artifacts.manifest import DEFAULT_THRESHOLD, Manifest

MULTI_LABEL_SEPARATOR = ","
SINGLE, MULTI = "single_label_classification", "multi_label_classification"


def scale(logits: np.ndarray, temperatures: tuple[float, ...] | np.ndarray | None
          ) -> np.ndarray:
    """``logits`` divided by the temperatures: one for every column (single-label) or one
    per column (multi-label); None leaves them as they are."""
    if temperatures is None:
        return logits
    return logits / np.asarray(temperatures, dtype=logits.dtype)


def probabilities(logits: np.ndarray, problem_type: str,
                  temperatures: tuple[float, ...] | np.ndarray | None = None) -> np.ndarray:
    """Softmax, sigmoid or identity by problem type, in float32, of the logits divided by
    ``temperatures`` (see :func:`scale`; classifiers only)."""
    logits = logits.astype(np.float32, copy=False)
    if problem_type != "regression":
        logits = scale(logits, temperatures)
    if problem_type == SINGLE:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if problem_type == MULTI:
        with np.errstate(over="ignore"):  # exp overflows to inf for logits below -88: 0.0
            return 1.0 / (1.0 + np.exp(-logits))
    return logits


@dataclass(frozen=True)
class DecisionRule:
    """How one model's logits become decisions: its problem type, labels, thresholds and
    temperatures.

    ``thresholds`` (multi-label only) holds one cut-off per label, applied to the calibrated
    probabilities; ``temperatures`` (None: uncalibrated) one value (single-label) or one per
    label (multi-label) that the logits are divided by.
    """

    problem_type: str
    labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    temperatures: tuple[float, ...] | None = None

    @classmethod
    def of(cls, manifest: Manifest, threshold: float | None = None) -> DecisionRule:
        """The rule users get from ``manifest``: ``threshold`` for every label if given, else
        the tuned per-label thresholds, else 0.5."""
        if threshold is not None:
            cut = (threshold,) * manifest.num_labels
        else:
            cut = manifest.thresholds or (DEFAULT_THRESHOLD,) * manifest.num_labels
        return cls(manifest.problem_type, manifest.labels, tuple(float(t) for t in cut),
                   manifest.temperatures)

    def with_threshold(self, threshold: float) -> DecisionRule:
        """This rule with one threshold for every label."""
        return dataclasses.replace(self, thresholds=(threshold,) * len(self.labels))

    @property
    def cut(self) -> np.ndarray:
        """The per-label thresholds as an array (multi-label)."""
        return np.array(self.thresholds, dtype=np.float32)

    @property
    def has_labels(self) -> bool:
        return self.problem_type != "regression"

    def scaled(self, logits: np.ndarray) -> np.ndarray:
        """The logits divided by this rule's temperatures: the logits of the probabilities
        users get (what thresholds are tuned on)."""
        return logits if not self.has_labels else scale(logits, self.temperatures)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The ``probs`` users get: calibrated softmax / sigmoid, or the regression value."""
        return probabilities(logits, self.problem_type, self.temperatures)

    def decide(self, logits: np.ndarray) -> np.ndarray:
        """The decisions users get: label ids (single-label), a multi-hot bool matrix
        (multi-label), the values (regression)."""
        if self.problem_type == SINGLE:
            return np.nan_to_num(logits).argmax(axis=1)
        if self.problem_type == MULTI:
            return self.probabilities(logits) >= self.cut
        return logits[:, 0]

    def differing(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Per row, whether the decisions from logits ``first`` and ``second`` differ
        (multi-label: anywhere in the label set)."""
        return (self.decide(first) != self.decide(second)).reshape(len(first), -1).any(axis=1)

    def fields(self) -> list[pa.Field]:
        """The output columns' names and types, in the order of :meth:`columns`."""
        fields = [pa.field("label", pa.string())]
        if self.problem_type == MULTI:
            fields.append(pa.field("labels", pa.list_(pa.string())))
        return [*fields, pa.field("score", pa.float32()), pa.field("probs", pa.list_(pa.float32()))]

    def columns(self, logits: np.ndarray) -> list[pa.Array]:
        """The output columns (see :meth:`fields`) for a window of logits."""
        null = np.isnan(logits).any(axis=1)
        probs = self.probabilities(np.nan_to_num(logits))
        names = np.array(self.labels, dtype=object)
        chosen: list[pa.Array] = []
        if self.problem_type == SINGLE:
            best = probs.argmax(axis=1)
            label = names[best]
            score = probs[np.arange(len(probs)), best]
        elif self.problem_type == MULTI:
            sets = [list(names[row]) for row in probs >= self.cut]
            label = np.array([MULTI_LABEL_SEPARATOR.join(s) for s in sets], dtype=object)
            chosen = [pa.array([None if n else s for s, n in zip(sets, null, strict=True)],
                               pa.list_(pa.string()))]
            score = probs.max(axis=1)
        else:
            label = np.full(len(probs), None, dtype=object)
            score = probs[:, 0]
        label[null] = None
        offsets = pa.array(np.arange(len(probs) + 1, dtype=np.int32) * probs.shape[1])
        return [
            pa.array(label, type=pa.string()),
            *chosen,
            pa.array(score.astype(np.float32), mask=null),
            pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1).astype(np.float32)),
                                     mask=pa.array(null)),
        ]

    def named_columns(self, logits: np.ndarray) -> dict[str, pa.Array]:
        """:meth:`columns` by name."""
        return dict(zip((f.name for f in self.fields()), self.columns(logits), strict=True))
