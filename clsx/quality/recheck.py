"""The re-check's cut δ, chosen from data, and what a sample says about the labels left.

The fast path and the fp32 reference classify the same sample. For each row, its
*perturbation* is how far the fast path moved the probability gaps its decision rests on
(single-label: the top label's probability minus each other's; multi-label: each label's
probability against its threshold). A row's decision can change only where its fast margin
(:func:`clsx.inference.recheck.margins`) is below its perturbation (every change the
sample shows is such a row), so

    δ = SAFETY x the largest perturbation on the sample (capped at MAX_MARGIN)

covers every row the fast path could have changed as far as the sample shows it move a
decision, and ``SAFETY`` = 1.5 leaves room for the tail beyond the sample. Measured on
three trained MiniLM models (AMD EPYC with AVX-512 VNNI/BF16; δ from 500 calibration
texts for onnx-int8, from the first 512 rows for torch bf16; 2,000-3,000 other rows each),
it caught all 329 label changes: SST-2 int8 35 at 10.2% of rows re-checked, bf16 2 at
0.8%; an underfit SST-2 int8 45 at 24%, bf16 4 at 3.8%; GoEmotions (28 labels,
thresholds down to 0.05) int8 216 at 100%, bf16 27 at 56%. The 99th percentile in place
of the maximum missed one change each on the trained SST-2 model; the largest margin of a
changed sample row alone missed more.

What is left is bounded, not assumed: a sample row is *at risk* when its margin is at or
over δ but under its perturbation (the fast path moved it enough to change it, and the
re-check would not look). The 95% Clopper-Pearson upper bound on the share at risk bounds
the labels that may still differ from fp32's. A sample of n rows with none at risk bounds
it at about 3/n: showing a target of 1e-4 takes ~30,000 rows, so on the default sample the
summary says which bound was shown rather than claim the target.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clsx.inference.decisions import MULTI, SINGLE, DecisionRule
from clsx.inference.recheck import margins

SAFETY = 1.5
MAX_MARGIN = 0.5  # past this, most rows would be re-checked: the fast path is no use
MOSTLY = 0.5  # a re-check of more rows than this is said to cost more than it saves
CONFIDENCE = 0.95
STORED = "recheck"  # the key of an export's cut in its manifest's ``parity``


@dataclass(frozen=True)
class RecheckCut:
    """A re-check cut and the sample it was chosen on.

    ``margin`` is δ; ``rows`` the sample's non-null rows; ``flips`` the rows whose decision
    the fast path changed; ``at_risk`` the rows it could have changed above δ;
    ``upper_bound`` the 95% bound on the share of labels that may still differ;
    ``rechecked_share`` the share of the sample under δ.
    """

    margin: float
    rows: int
    flips: int
    at_risk: int
    upper_bound: float
    rechecked_share: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecheckCut:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def describe(self, target: float) -> str:
        """One line for logs: the cut, and the bound the sample shows against ``target``
        (``--max-label-changes``)."""
        line = (f"re-check below margin {self.margin:.6g} ({self.rechecked_share:.1%} of "
                f"{self.rows} sample rows; {self.flips} label changes in the sample, "
                f"{self.at_risk} rows at risk above the cut")
        line += f"); labels that may still differ from fp32: <= {self.upper_bound:.2%} (95%)"
        if self.rechecked_share > MOSTLY:
            line += (f"; re-checking {self.rechecked_share:.0%} of rows, this format gains "
                     "nothing over fp32 on these texts")
        if self.upper_bound > target:
            needed = rows_to_show(target)
            line += (f", above --max-label-changes {target:g}: showing it takes a sample "
                     f"of >= {needed} rows with none at risk")
        return line


def perturbations(rule: DecisionRule, fast: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row, how far the fast path moved the probability gaps its decision rests on."""
    moved = rule.probabilities(fast) - rule.probabilities(reference)
    if rule.problem_type == SINGLE:
        top = rule.probabilities(fast).argmax(axis=1)
        return np.abs(moved[np.arange(len(moved)), top][:, None] - moved).max(axis=1)
    if rule.problem_type == MULTI:
        return np.abs(moved).max(axis=1)
    return np.zeros(len(fast), dtype=np.float32)


def choose_cut(rule: DecisionRule, fast: np.ndarray, reference: np.ndarray) -> RecheckCut:
    """The cut for a fast path that gave ``fast`` where the reference gave ``reference`` on
    the same sample rows (null rows, NaN in either, are left out)."""
    present = ~(np.isnan(fast).any(axis=1) | np.isnan(reference).any(axis=1))
    fast, reference = fast[present], reference[present]
    rows = len(fast)
    if rows == 0 or not rule.has_labels:
        return RecheckCut(0.0, rows, 0, 0, upper_bound(0, rows), 0.0)
    margin = margins(rule, fast)
    moved = perturbations(rule, fast, reference)
    flipped = rule.differing(fast, reference)
    cut = min(SAFETY * float(moved.max()), MAX_MARGIN)
    at_risk = int(((margin >= cut) & (margin < moved)).sum())
    return RecheckCut(round(cut, 6), rows, int(flipped.sum()), at_risk,
                      upper_bound(at_risk, rows), float((margin < cut).mean()))


def upper_bound(events: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """The one-sided Clopper-Pearson upper bound on a rate seen ``events`` times in
    ``trials`` (1.0 for no trials)."""
    if trials == 0 or events >= trials:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, events + 1, trials - events))


def rows_to_show(target: float, confidence: float = CONFIDENCE) -> int:
    """The sample size whose upper bound with no event reaches ``target``."""
    return math.ceil(math.log(1 - confidence) / math.log1p(-target))


@dataclass(frozen=True)
class FallbackCut:
    """A cascade's cut and the sample it was chosen on: ``margin`` (rows of the first model
    under it go to the fallback), ``rows``, the ``share`` of them sent, and the
    ``agreement`` of the cascade's decisions with the fallback model's alone."""

    margin: float
    rows: int
    share: float
    agreement: float

    def describe(self) -> str:
        return (f"rows under margin {self.margin:.3g} go to the fallback model: "
                f"{self.share:.1%} of {self.rows} sample rows, agreeing with it alone on "
                f"{self.agreement:.2%}")


def choose_fallback_cut(rule: DecisionRule, first: np.ndarray, first_decisions: np.ndarray,
                        fallback_decisions: np.ndarray, target: float) -> FallbackCut:
    """The smallest cut at which the cascade is expected to agree with the fallback model on
    at least ``target`` of new rows, not only of the sample: ``first`` are the first model's
    logits, the decisions each model's own (its thresholds); rows null in ``first`` are
    left out.

    A cut that leaves the sample's k surest disagreements above it leaves, on a new row
    drawn as the sample's were, a disagreement above it with probability at most
    (k + 1) / (n + 1) (the new row would have to rank among the k + 1 surest disagreements
    of the n + 1 rows), so k is the largest with (k + 1) / (n + 1) <= 1 - ``target``
    (at least 0). Keeping the sample's own agreement at ``target`` instead (k = (1 -
    target) n) left 98.4% agreement on SST-2's test split for a 0.99 target.
    """
    present = ~np.isnan(first).any(axis=1)
    margin = margins(rule, first[present])
    rows = len(margin)
    differ = (first_decisions[present] != fallback_decisions[present]).reshape(rows, -1)
    differ = differ.any(axis=1)
    allowed = max(int(np.floor((1 - target) * (rows + 1) + 1e-9)) - 1, 0)
    kept = np.sort(margin[differ])[::-1]  # the disagreements, surest first
    cut = 0.0 if len(kept) <= allowed else float(np.nextafter(kept[allowed], np.inf))
    sent = margin < cut
    agreement = 1.0 - float((differ & ~sent).sum()) / rows if rows else 1.0
    return FallbackCut(cut, rows, float(sent.mean()) if rows else 0.0, agreement)
