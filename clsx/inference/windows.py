"""A long text's windows: where each text's inputs start, and one row of logits per text
from its windows' logits (the ``--aggregate`` of :mod:`clsx.artifacts.long_text`)."""

from __future__ import annotations

import numpy as np


def first_inputs(counts: np.ndarray) -> np.ndarray:
    """Where each text's first input is, given the number of inputs of each text."""
    return (np.cumsum(counts) - counts).astype(np.int64)


def combine(logits: np.ndarray, counts: np.ndarray, how: str, problem_type: str) -> np.ndarray:
    """One row of logits per text from ``counts[i]`` consecutive rows (its windows) each.

    Rows of NaN (null texts, which always have one row) stay NaN.
    """
    if len(logits) == len(counts):
        return logits
    starts = first_inputs(counts)
    if how == "max":
        return np.maximum.reduceat(logits, starts, axis=0)
    if how == "mean":
        return (np.add.reduceat(logits, starts, axis=0) / counts[:, None]).astype(np.float32)
    if problem_type == "regression":
        return np.array([np.median(logits[s : s + n], axis=0) for s, n in
                         zip(starts, counts, strict=True)], dtype=np.float32)
    if problem_type == "multi_label_classification":
        share = np.add.reduceat((logits > 0).astype(np.float32), starts, axis=0) / counts[:, None]
        share = np.clip(share, 1e-6, 1 - 1e-6)
        combined = np.log(share / (1 - share))
    else:
        votes = np.zeros_like(logits)
        votes[np.arange(len(logits)), np.nan_to_num(logits, nan=0.0).argmax(axis=1)] = 1.0
        combined = np.log(np.maximum(np.add.reduceat(votes, starts, axis=0) / counts[:, None],
                                     1e-6))
    combined[np.isnan(logits[starts]).any(axis=1)] = np.nan
    return combined.astype(np.float32)
