"""Re-checking the rows a lower-precision run is unsure of with the fp32 reference, and
sending the rows a first model is unsure of to a fallback model (a cascade).

A bf16, fp16 or int8 run moves every probability a little; a label changes only where the
decision was close. The *margin* of a row says how close: single-label, the top-1 minus the
top-2 probability; multi-label, the smallest distance of a label's probability from its
threshold (both on the calibrated probabilities users get). Rows whose fast margin is under
the cut δ are scored again by the reference (PyTorch fp32 of the same model) and take its
output, so that on them the labels are fp32's exactly. How δ is chosen from data lives in
:mod:`clsx.quality.recheck`.

A cascade (``--fallback-model``) uses the same margin on the first model's output: rows
under its cut are classified again, from their texts, by another model with the same labels
(a teacher behind its distilled student), and take that model's output columns.

Regression has no decision to flip: its rows are never re-checked (see the README).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from clsx.inference.decisions import MULTI, SINGLE, DecisionRule
from clsx.inference.runners.base import Runner

LOWER_PRECISIONS = ("bf16", "fp16", "int8")  # the number formats a re-check applies to


def margins(rule: DecisionRule, logits: np.ndarray) -> np.ndarray:
    """How far each row's decision is from changing, in probability; +inf for null rows and
    for regression (nothing to change)."""
    out = np.full(len(logits), np.inf, dtype=np.float32)
    present = ~np.isnan(logits).any(axis=1)
    if not present.any() or rule.problem_type not in (SINGLE, MULTI):
        return out
    probs = rule.probabilities(logits[present])
    if rule.problem_type == SINGLE:
        if probs.shape[1] < 2:
            return out
        top = np.sort(probs, axis=1)
        out[present] = top[:, -1] - top[:, -2]
    else:
        out[present] = np.abs(probs - rule.cut).min(axis=1)
    return out


def unsure_rows(rule: DecisionRule, logits: np.ndarray, margin: float) -> np.ndarray:
    """Indices of the rows whose margin is under ``margin`` (a re-check's or a cascade's
    cut)."""
    return np.flatnonzero(margins(rule, logits) < margin)


@dataclass
class Recheck:
    """The cut ``margin`` (δ) and the reference that re-scores rows under it.

    ``open_reference`` is called on the first row to re-check, so a job with nothing to
    re-check never loads the reference.
    """

    margin: float
    open_reference: Callable[[], Runner]
    _runner: Runner | None = field(default=None, repr=False)

    def reference(self) -> Runner:
        """The reference runner, loaded on first use."""
        if self._runner is None:
            self._runner = self.open_reference()
        return self._runner

    def close(self) -> None:
        """Release the reference, where it was loaded."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None


def take_rows(first: Sequence[pa.Array], second: Sequence[pa.Array], chosen: np.ndarray
              ) -> list[pa.Array]:
    """Columns whose rows ``chosen`` (indices, in order) come from ``second``, one row of it
    each, and the others from ``first``."""
    rows = len(first[0]) if first else 0
    index = np.arange(rows)
    index[chosen] = rows + np.arange(len(chosen))
    return [pa.concat_arrays([a, b]).take(pa.array(index))
            for a, b in zip(first, second, strict=True)]
