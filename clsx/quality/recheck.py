"""The re-check's cut δ, chosen from data, and what a sample says about the labels left.

The fast path and the fp32 reference classify the same sample. For each row, its
*perturbation* is how far the fast path moved the probability gaps its decision rests on
(single-label: the top label's probability minus each other's; multi-label: each label's
probability against its threshold). A row's decision can change only where its fast margin
(:func:`clsx.inference.recheck.margins`) is below its perturbation. The sample rows where
that holds are the ones the fast path could have changed (those it did change among them),
so

    δ = SAFETY x max(largest margin of a row that could have changed, median perturbation)

covers them all. The median is the floor for samples with no such row (bf16 moves
probabilities by ~1e-3: a 512-row sample often holds no row that close to the boundary,
while 3,000 rows hold a few): rows within a typical perturbation of the boundary are where
a bigger input's changes sit. ``SAFETY`` = 1.5 is room for rows beyond the sample. Measured
on a MiniLM SST-2 model (AMD EPYC with AVX-512 VNNI/BF16), δ from the first 512 of 3,000
texts: onnx-int8 changed 45 labels, δ = 0.0119 re-checks 8.1% of rows and catches all 45;
torch bf16 changed 4, δ = 0.0007 re-checks 0.5% and catches all 4. The 99th percentile of
perturbations in place of the first term caught the same at 23% and 2.6%.

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
CONFIDENCE = 0.95


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
        line = (f"re-check below margin {self.margin:.3g} ({self.rechecked_share:.1%} of "
                f"{self.rows} sample rows; {self.flips} label changes in the sample, "
                f"{self.at_risk} rows at risk above the cut")
        line += f"); labels that may still differ from fp32: <= {self.upper_bound:.2%} (95%)"
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
    flipped = (rule.decide(fast) != rule.decide(reference)).reshape(rows, -1).any(axis=1)
    cover = float(margin[margin < moved].max(initial=0.0))  # flipped rows among them
    cut = min(SAFETY * max(cover, float(np.median(moved))), MAX_MARGIN)
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
    """The smallest cut at which the cascade agrees with the fallback model on at least
    ``target`` of the sample: ``first`` are the first model's logits, the decisions each
    model's own (its thresholds); rows null in ``first`` are left out."""
    present = ~np.isnan(first).any(axis=1)
    margin = margins(rule, first[present])
    rows = len(margin)
    differ = (first_decisions[present] != fallback_decisions[present]).reshape(rows, -1)
    differ = differ.any(axis=1)
    allowed = int(np.floor((1 - target) * rows + 1e-9))
    kept = np.sort(margin[differ])[::-1]  # the disagreements, surest first
    cut = 0.0 if len(kept) <= allowed else float(np.nextafter(kept[allowed], np.inf))
    sent = margin < cut
    agreement = 1.0 - float((differ & ~sent).sum()) / rows if rows else 1.0
    return FallbackCut(cut, rows, float(sent.mean()) if rows else 0.0, agreement)
