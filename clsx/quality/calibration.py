"""Temperature scaling, and how well probabilities are calibrated (ECE, Brier, NLL).

A fine-tuned classifier's softmax is usually over-confident: rows scored 0.95 are right
less than 95% of the time. Temperature scaling (Guo et al., 2017) divides the logits by one
fitted T > 0 before the softmax (multi-label: one T_j per label, before each sigmoid),
choosing T to minimise the negative log-likelihood of held-out labelled rows. A single-label
argmax, hence accuracy, is unchanged; only the probabilities move.

``clsx train`` fits the temperatures on its eval split, ``clsx calibrate`` on given data;
both store them in ``clsx.json``, and :class:`~clsx.inference.decisions.DecisionRule` applies them
for every backend. ``clsx eval`` reports the measures here before and after.

Everything works on raw logits and gold targets: class ids (single-label) or a multi-hot
matrix (multi-label).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clsx.artifacts.manifest import Manifest
from clsx.errors import ClsxError
from clsx.inference.decisions import MULTI, SINGLE, probabilities, scale
from clsx.log import Log, silent
from clsx.quality.metrics import UNCALIBRATED, tune_thresholds

ECE_BINS = 15
# The search runs over log T in this range (T from about 0.05 to 20): wide enough for any
# fine-tuned model, bounded so that separable data (NLL falling towards T -> 0) stops.
LOG_T_RANGE = (-3.0, 3.0)
SEARCH_STEPS = 60  # golden-section steps: the bracket shrinks to ~1e-12 of its width
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def _check_classifier(problem_type: str) -> None:
    if problem_type not in (SINGLE, MULTI):
        raise ClsxError(f"calibration applies to classifiers; a {problem_type} model's outputs "
                        "are values, not probabilities")


def _per_column_nll(logits: np.ndarray, targets: np.ndarray, problem_type: str) -> np.ndarray:
    """Mean negative log-likelihood in float64: one value (single-label) or one per label
    (multi-label, binary cross-entropy of each sigmoid)."""
    z = logits.astype(np.float64)
    if problem_type == SINGLE:
        rows, top = np.arange(len(z)), z.argmax(axis=1)
        others = np.exp(z - z[rows, top][:, None])
        others[rows, top] = 0.0
        # -log p_y = (z_max - z_y) + log1p(sum of the others' exp(z - z_max)): exact when one
        # class dominates, so that confidently right rows' NLL does not round to a flat 0.
        gap = z[rows, top] - z[rows, targets.astype(np.int64)]
        return np.array([np.mean(gap + np.log1p(others.sum(axis=1)))])
    # -log sigmoid(z) for a positive, -log(1 - sigmoid(z)) = -log sigmoid(-z) for a negative.
    signed = np.where(targets.astype(bool), z, -z)
    return np.logaddexp(0.0, -signed).mean(axis=0)


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray, problem_type: str,
                            temperatures: tuple[float, ...] | None = None) -> float:
    """Mean NLL of the targets under the (temperature-scaled) probabilities; multi-label:
    the binary cross-entropy averaged over rows and labels."""
    _check_classifier(problem_type)
    return float(_per_column_nll(scale(logits.astype(np.float64), temperatures), targets,
                                 problem_type).mean())


def fit_temperatures(logits: np.ndarray, targets: np.ndarray, problem_type: str
                     ) -> tuple[float, ...]:
    """The temperatures that minimise the NLL of ``targets``: ``(T,)`` for a single-label
    model, one per label for a multi-label one.

    The NLL is convex in 1/T, so unimodal in log T: a golden-section search over
    :data:`LOG_T_RANGE` finds the minimum (all labels searched at once). A temperature that
    does not lower the NLL below T = 1 (e.g. a label whose logits are all equal) stays 1.
    """
    _check_classifier(problem_type)
    if len(logits) == 0:
        raise ClsxError("calibration needs at least one labelled row")
    z = logits.astype(np.float64)
    width = 1 if problem_type == SINGLE else z.shape[1]

    def loss(log_t: np.ndarray) -> np.ndarray:
        return _per_column_nll(z / np.exp(log_t), targets, problem_type)

    low, high = np.full(width, LOG_T_RANGE[0]), np.full(width, LOG_T_RANGE[1])
    left, right = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(SEARCH_STEPS):
        # Per column, keep the side of the bracket that holds the lower of the two probes.
        go_left = loss_left < loss_right
        high = np.where(go_left, right, high)
        low = np.where(go_left, low, left)
        left, right = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
        loss_left, loss_right = loss(left), loss(right)
    best = (low + high) / 2
    improves = loss(best) < loss(np.zeros(width)) - 1e-12
    fitted = np.where(improves, np.exp(best), 1.0)
    # Five significant digits: far finer than the fit's own noise, and clsx.json stays legible.
    return tuple(float(f"{t:.5g}") for t in fitted)


def calibrate_manifest(manifest: Manifest, logits: np.ndarray, targets: np.ndarray,
                       calibrate: bool = True, log: Log = silent) -> Manifest:
    """``manifest`` with temperatures fitted on these rows' raw logits (None when not
    ``calibrate``) and, multi-label, per-label thresholds tuned on the probabilities those
    temperatures give, which are the ones the thresholds will cut (``clsx train`` and
    ``clsx calibrate``). ``log`` hears about temperatures stopped by the search's limits."""
    temperatures = (fit_temperatures(logits, targets, manifest.problem_type) if calibrate
                    else None)
    low, high = np.exp(LOG_T_RANGE)
    names = manifest.labels if manifest.problem_type == MULTI else ("",)
    extreme = [f"{name} {t:g}".strip()
               for name, t in zip(names, temperatures or (), strict=False)
               if not low * 1.001 < t < high * 0.999]
    if extreme:
        log(f"Temperature {', '.join(extreme)} is at the limit of the search ({low:.2g} to "
            f"{high:.3g}): on these rows the logits say almost nothing about the labels "
            "(high T) or separate them perfectly (low T); more, or more varied, calibration "
            "data would give a firmer value")
    manifest = manifest.replace(temperatures=temperatures)
    if manifest.problem_type == MULTI:
        manifest = manifest.replace(
            thresholds=tune_thresholds(scale(logits, temperatures), targets))
    return manifest


@dataclass(frozen=True)
class Reliability:
    """Confidence against outcome in equal-width bins over [0, 1] (empty bins are NaN).

    ``confidence`` and ``accuracy`` are each bin's mean predicted probability and share of
    positive outcomes; ``ece`` is the expected calibration error, their count-weighted mean
    absolute gap.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability(probability: np.ndarray, outcome: np.ndarray,
                bins: int = ECE_BINS) -> Reliability:
    """Bin ``probability`` (each in [0, 1]) and the matching boolean ``outcome``.

    A probability of exactly 1 falls in the last bin, not one past it.
    """
    probability = np.asarray(probability, dtype=np.float64).reshape(-1)
    outcome = np.asarray(outcome, dtype=np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probability, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, probability, minlength=bins) / counts
        accuracy = np.bincount(index, outcome, minlength=bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] * np.abs(accuracy[filled] - confidence[filled]))
                / max(counts.sum(), 1))
    return Reliability(edges, counts, confidence, accuracy, ece)


def _binned_gap(confidence: np.ndarray, hit: np.ndarray, bins: int) -> float:
    """The expected calibration error of ``confidence`` against ``hit`` (see
    :func:`reliability`); 0 for no rows."""
    return reliability(confidence, hit, bins).ece if len(confidence) else 0.0


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, problem_type: str,
                               bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``bins`` equal-width bins.

    Single-label: on the top-label confidence (the ``score`` column) against whether that
    label is right. Multi-label: each label's probability against whether the label is
    present, averaged over labels (see :func:`per_label_calibration_error`).
    """
    _check_classifier(problem_type)
    if problem_type == MULTI:
        return float(per_label_calibration_error(probs, targets, bins).mean())
    confidence = probs.max(axis=1).astype(np.float64)
    hit = (probs.argmax(axis=1) == targets).astype(np.float64)
    return _binned_gap(confidence, hit, bins)


def per_label_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS
                                ) -> np.ndarray:
    """Multi-label: the ECE of each label's sigmoid against its presence, one per label."""
    return np.array([_binned_gap(probs[:, j].astype(np.float64),
                                 targets[:, j].astype(np.float64), bins)
                     for j in range(probs.shape[1])])


def brier_score(probs: np.ndarray, targets: np.ndarray, problem_type: str) -> float:
    """Mean squared error of the probabilities against the outcomes.

    Single-label: the multi-class Brier score, sum over classes of (p - one-hot)^2,
    averaged over rows (0 is perfect, 2 the worst). Multi-label: (p_j - y_j)^2 averaged over
    rows and labels (0 to 1).
    """
    _check_classifier(problem_type)
    probs = probs.astype(np.float64)
    if problem_type == MULTI:
        return float(np.mean((probs - targets) ** 2))
    one_hot = np.eye(probs.shape[1])[targets.astype(np.int64)]
    return float(np.mean(((probs - one_hot) ** 2).sum(axis=1)))


def calibration_report(logits: np.ndarray, targets: np.ndarray, problem_type: str,
                       temperatures: tuple[float, ...] | None = None) -> dict[str, float]:
    """``ece``, ``brier`` and ``nll`` of the probabilities at ``temperatures`` (None: raw)."""
    probs = probabilities(logits, problem_type, temperatures)
    return {"ece": expected_calibration_error(probs, targets, problem_type),
            "brier": brier_score(probs, targets, problem_type),
            "nll": negative_log_likelihood(logits, targets, problem_type, temperatures)}


def before_and_after(logits: np.ndarray, targets: np.ndarray, problem_type: str,
                     temperatures: tuple[float, ...] | None) -> dict[str, float]:
    """The :func:`calibration_report` at ``temperatures`` (``ece``, ...) beside the raw
    softmax / sigmoid's (``ece_uncalibrated``, ...): what ``clsx eval`` reports."""
    after = calibration_report(logits, targets, problem_type, temperatures)
    before = calibration_report(logits, targets, problem_type)
    return {**after, **{f"{name}{UNCALIBRATED}": value for name, value in before.items()}}
