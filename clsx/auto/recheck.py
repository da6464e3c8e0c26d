"""Which runs re-check, against which fp32 reference, and at which cut; a cascade's
fallback model checked, and its cut chosen.

A run re-checks (:mod:`clsx.inference.recheck`) when its runner computes below fp32 (torch,
vLLM or OpenVINO in bf16/fp16, onnx-int8, TensorRT fp16), the model has labels, and
``--no-recheck`` is not given. The reference is fp32 of the same runner for a dtype change
(a runner in bf16/fp16 on fp32 weights; torch fp32 for vLLM, which would start a second
engine: :attr:`~clsx.inference.runners.base.Runner.recheck_backend`), OpenVINO fp32 on the
fp32 IR an openvino-int8 export carries (``fp32/``), and PyTorch fp32 of the export's parent
model directory for another export stored or built below fp32 (onnx-int8, TensorRT); an
export whose parent is gone is refused unless the run passes ``--no-recheck``.

The cut δ (:mod:`clsx.quality.recheck`) comes from, in this order: the job a ``--resume``
continues (every row of OUT re-checked alike), the export's ``clsx.json`` (measured at
export time on ``--calibration-data``), this machine's remembered cut (``auto-recheck.json``
in the clsx cache, keyed like the dtype choice), or a measurement on IN's first
:data:`SAMPLE_TEXTS` texts, which is then remembered.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from clsx.artifacts.artifact import FP32_REFERENCE, Artifact, open_artifact
from clsx.artifacts.bundled import cache_dir
from clsx.artifacts.manifest import MANIFEST_NAME
from clsx.auto.dtype import read_choices, remember
from clsx.errors import ClsxError
from clsx.inference.classifier import Classifier
from clsx.inference.hardware import machine_description
from clsx.inference.recheck import LOWER_PRECISIONS, Recheck
from clsx.inference.runners import load_runner
from clsx.inference.runners.base import Runner, RunnerOptions
from clsx.log import Log, silent
from clsx.quality.recheck import (
    STORED,
    FallbackCut,
    RecheckCut,
    choose_cut,
    choose_fallback_cut,
)

SAMPLE_TEXTS = 512
# A cascade's sample: enough rows that its cut may leave this many of the sample's
# disagreements above it; at most a fiftieth of the job, and of this many rows.
CASCADE_LEFT_ABOVE = 9
CASCADE_JOB_SHARE = 50
CASCADE_MOST_TEXTS = 8192
# Formats that hold fp32 weights: a run of one below fp32 is a dtype change (torch, vLLM and
# OpenVINO in bf16/fp16), re-checked by the same runner in fp32.
FP32_FORMATS = ("torch", "onnx", "openvino")


def rechecks(classifier: Classifier, wanted: bool | None = None) -> bool:
    """Whether ``classifier`` re-checks: lower precision, labels, and not ``--no-recheck``."""
    return (wanted is not False and classifier.runner.precision in LOWER_PRECISIONS
            and classifier.rule.has_labels)


def reference_opener(classifier: Classifier) -> Callable[[], Runner]:
    """A loader of ``classifier``'s fp32 reference; an export whose parent model directory
    is gone is refused here, before any work."""
    artifact, runner = classifier.artifact, classifier.runner
    fp32 = dataclasses.replace(runner.options, dtype="fp32")
    # Another backend's fp32 takes no engine options but the dtype.
    plain = RunnerOptions(device=runner.options.device, threads=runner.options.threads,
                          max_length=runner.options.max_length, dtype="fp32")
    if artifact.manifest.format in FP32_FORMATS:  # a dtype change
        if runner.recheck_backend is not None:
            return lambda: load_runner(artifact, runner.recheck_backend, plain)
        return lambda: type(runner)(artifact, fp32)
    own = artifact.path / FP32_REFERENCE
    if (own / MANIFEST_NAME).is_file():  # the fp32 IR an openvino-int8 export carries
        return lambda: type(runner)(open_artifact(own, check_parent=False), fp32)
    parent = export_parent(artifact)
    return lambda: load_runner(parent, "torch", plain)


def export_parent(artifact: Artifact) -> Artifact:
    """The model directory ``artifact`` was exported from, which must still be there."""
    manifest = artifact.manifest
    parent = (artifact.path / manifest.parent).resolve() if manifest.parent else None
    if parent is None or not (parent / "config.json").is_file():
        where = f" ({parent})" if parent is not None else ""
        raise ClsxError(
            f"{artifact.path} is a {manifest.format} export whose parent model directory"
            f"{where}, the fp32 reference its unsure rows are re-checked with, is gone; "
            "restore it, or pass --no-recheck to run without the re-check")
    return open_artifact(parent)


def attach(classifier: Classifier, margin: float = 0.0) -> Recheck:
    """Make ``classifier`` re-check the rows under ``margin`` with its reference (0: none
    until :func:`resolve_cut` sets the cut)."""
    classifier.recheck = Recheck(margin, reference_opener(classifier))
    return classifier.recheck


def resolve_cut(classifier: Classifier, texts: Callable[[], list[str]],
                threads: int | None = None, log: Log = silent) -> RecheckCut | None:
    """The cut ``classifier`` (re-check attached) re-checks at: the export's stored one,
    this machine's remembered one, else measured on ``texts()`` (None: no texts to measure
    on)."""
    stored = classifier.manifest.parity.get(STORED)
    if stored is not None:
        return RecheckCut.from_json(stored)
    key = "|".join([classifier.artifact.fingerprint, classifier.description, str(threads),
                    machine_description(), str(classifier.rule.thresholds),
                    str(classifier.encoder.max_length)])
    remembered = read_choices(_cache()).get(key)
    if remembered is not None:
        return RecheckCut.from_json(remembered)
    sample = texts()
    if not sample:
        return None
    log(f"measuring the re-check cut on {len(sample)} texts beside fp32")
    window = classifier.encoder.encode(sample)
    cut = choose_cut(classifier.rule, classifier.logits(window),
                     classifier.logits(window, classifier.recheck.reference()))
    remember(_cache(), key, cut.to_json())
    return cut


def _cache():
    return cache_dir() / "auto-recheck.json"


def check_fallback(first: Artifact, fallback: Artifact) -> None:
    """Refuse a fallback model whose labels or problem type differ from the first model's:
    its rows must mean what the first model's mean."""
    check_cascade(first, "--fallback-model")
    check_same_labels(first, fallback, "--fallback-model")


def check_cascade(first: Artifact, option: str) -> None:
    """Refuse a cascade (asked for by ``option``) whose first model is a regression model:
    it has no confidence to send rows on."""
    if first.manifest.problem_type == "regression":
        raise ClsxError(f"{option} needs a classifier: a regression model has no "
                        "confidence to send rows on")


def check_same_labels(first: Artifact, other: Artifact, option: str) -> None:
    """Refuse ``other`` (given as ``option``) unless its labels, in order, and problem type
    are ``first``'s."""
    ours, theirs = first.manifest, other.manifest
    if ours.problem_type != theirs.problem_type or ours.labels != theirs.labels:
        raise ClsxError(
            f"{option} {other.path} must have the labels and problem type of "
            f"{first.path}: it has {theirs.problem_type} [{', '.join(theirs.labels)}], the "
            f"model {ours.problem_type} [{', '.join(ours.labels)}]")


def cascade_sample_size(target: float, rows: int) -> int:
    """How many of IN's first texts a cascade's cut is chosen on, for a job of ``rows`` rows
    and a ``target`` agreement.

    The cut leaves k of the sample's disagreements above it, the largest k with
    (k + 1) / (n + 1) <= 1 - target (:func:`~clsx.quality.recheck.choose_fallback_cut`),
    so a small sample sends more rows than the target needs: at 0.995, 512 rows may leave
    one disagreement (the sample must agree on 99.8%), 1,999 rows leave
    :data:`CASCADE_LEFT_ABOVE` (99.55%). Both models classify every sample row, so the
    sample is at most a :data:`CASCADE_JOB_SHARE`-th of the job (2% of what the fallback
    model alone would cost), and never under :data:`SAMPLE_TEXTS`.
    """
    if target >= 1.0:
        return SAMPLE_TEXTS  # no disagreement may be left, whatever the sample's size
    wanted = math.ceil((CASCADE_LEFT_ABOVE + 1) / (1 - target) - 1e-9) - 1
    return max(SAMPLE_TEXTS, min(wanted, rows // CASCADE_JOB_SHARE, CASCADE_MOST_TEXTS))


def fallback_cut(classifier: Classifier, texts: list[str], target: float
                 ) -> FallbackCut | None:
    """The cut at which ``classifier``'s cascade (fallback attached) agrees with its
    fallback model alone on ``target`` of ``texts`` (None: no texts)."""
    if not texts:
        return None
    fallback = classifier.fallback.classifier
    first = classifier.predict(texts).logits
    second = fallback.predict(texts).logits
    return choose_fallback_cut(classifier.rule, first, classifier.rule.decide(first),
                               fallback.rule.decide(second), target)
