"""From logits to the output columns: ``label``, ``score`` and ``probs``.

The meaning is the same for every backend:
- single-label: ``probs`` = softmax, ``label`` = the most probable label, ``score`` its prob;
- multi-label: ``probs`` = per-label sigmoid, ``label`` = the labels with prob >= their
  threshold joined by ``,`` (empty string when none), ``score`` = the highest prob;
- regression: ``probs`` = [value], ``label`` null, ``score`` = the predicted value.
Rows whose logits are NaN (null input text) get null in all three columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clsx.manifest import Manifest

MULTI_LABEL_SEPARATOR = ","


def probabilities(logits: np.ndarray, problem_type: str) -> np.ndarray:
    """Softmax, sigmoid or identity by problem type, in float32."""
    logits = logits.astype(np.float32, copy=False)
    if problem_type == "single_label_classification":
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if problem_type == "multi_label_classification":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def predicted_ids(logits: np.ndarray, problem_type: str) -> np.ndarray:
    """Label ids compared in parity checks: argmax, or the multi-hot decision per label."""
    if problem_type == "multi_label_classification":
        return (logits > 0).astype(np.int64)
    return logits.argmax(axis=1)


def prediction_columns(
    logits: np.ndarray, manifest: Manifest, threshold: float | None = None
) -> dict[str, pa.Array]:
    """The ``label``, ``score`` and ``probs`` Arrow columns for a window of logits.

    Multi-label ``label`` lists the labels at or above ``threshold`` (None: the model's
    tuned per-label thresholds, else 0.5).
    """
    null = np.isnan(logits).any(axis=1)
    probs = probabilities(np.nan_to_num(logits), manifest.problem_type)
    labels = np.array(manifest.labels, dtype=object)
    if manifest.problem_type == "single_label_classification":
        best = probs.argmax(axis=1)
        label = labels[best]
        score = probs[np.arange(len(probs)), best]
    elif manifest.problem_type == "multi_label_classification":
        cut = manifest.decision_thresholds(threshold)
        label = np.array(
            [MULTI_LABEL_SEPARATOR.join(labels[row >= cut]) for row in probs], dtype=object
        )
        score = probs.max(axis=1)
    else:
        label = np.full(len(probs), None, dtype=object)
        score = probs[:, 0]
    label[null] = None
    offsets = pa.array(np.arange(len(probs) + 1, dtype=np.int32) * probs.shape[1])
    return {
        "label": pa.array(label, type=pa.string()),
        "score": pa.array(score.astype(np.float32), mask=null),
        "probs": pa.ListArray.from_arrays(
            offsets, pa.array(probs.reshape(-1).astype(np.float32)), mask=pa.array(null)
        ),
    }
