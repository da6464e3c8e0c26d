"""``--backend auto`` on a big CPU job: the fastest format of a PyTorch model that passes the
gates on this machine, chosen by measuring here.

Before classifying IN (a PyTorch model directory, ``--backend auto`` without ``--dtype``, the
CPU, and IN of at least :data:`FORMAT_SEARCH_MIN_ROWS` rows or ``--auto-formats``), clsx
exports the model once to ``onnx`` (fp32, fused), ``onnx-int8`` and, where OpenVINO is
installed, ``openvino`` and ``openvino-int8`` through ``clsx export``'s gates (int8
calibrated and gated on IN's first :data:`CALIBRATION_TEXTS` texts), keeps the
exports in its cache, and classifies IN's first :data:`PROBE_TEXTS` texts with each candidate:
torch fp32 and in the CPU's native lower precision (bf16 with AVX-512 BF16 or AMX), onnx,
onnx-int8, openvino-int8, for a decoder where vLLM is installed, vLLM on the model directory
in the same dtypes as torch, and OpenVINO (``clsx[openvino]``) on the openvino export in the
same dtypes. It runs the fastest candidate that passed its gate, except that
a less exact number format (bf16 below fp32, int8 below both) must be at least
:data:`LESS_EXACT_MARGIN` times as fast as the best more exact one: where int8 is about as
fast as fp32 (CPUs without VNNI), fp32 stays. A job that re-checks
(:mod:`clsx.auto.recheck`) times each lower-precision candidate with its re-check: the
share of the probe rows under its cut, re-scored at its reference's measured speed (OpenVINO
fp32 for OpenVINO bf16 and openvino-int8, torch fp32 for torch and vLLM bf16 and onnx-int8).

Gates: the onnx and openvino exports: logits within 1e-4 of PyTorch (the export's);
onnx-int8 and openvino-int8: the labels users get equal to fp32's on >= 98% of the
calibration texts (the export's); torch bf16: probabilities within 5e-2 of fp32's and every
label equal on the probe texts (:mod:`clsx.auto.dtype`'s; in a job that re-checks, the
labels it gives: the rows under the cut take fp32's); vLLM and OpenVINO: the same, within
2e-3 in fp32. In a job that re-checks, a lower precision whose re-check cannot cover the
changes the probe shows it making (:func:`covers`: a probe row moved further than the cut,
or rows at risk above it) does not qualify: some of its labels would not be fp32's.

The choice is cached per model fingerprint, ``--max-length`` (the fastest format differs
between short and long inputs), threads and machine (CPU model, cores, vector and int8
flags) in ``auto-format.json`` under the clsx cache, next to the exports
(``exports/<fingerprint>/``), so that later runs and a ``--resume`` run the same format
without measuring again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clsx.artifacts.artifact import Artifact, open_artifact
from clsx.artifacts.bundled import cache_dir
from clsx.artifacts.manifest import Manifest
from clsx.auto.dtype import best_time, read_choices, remember
from clsx.errors import ClsxError
from clsx.inference.decisions import DecisionRule
from clsx.inference.hardware import machine_description, native_low_precision
from clsx.inference.recheck import LOWER_PRECISIONS, margins
from clsx.inference.runners import RunnerOptions
from clsx.log import Log, silent
from clsx.quality.parity import ParityReport, compare, passes_dtype_gate
from clsx.quality.recheck import STORED, RecheckCut, choose_cut, perturbations

FORMAT_SEARCH_MIN_ROWS = 20_000  # smaller jobs would not repay the exports' minutes
CALIBRATION_TEXTS = 500
PROBE_TEXTS = 256
WARM_UP_TEXTS = 32
PROBE_REPEATS = 2
LESS_EXACT_MARGIN = 1.10
# How far each number format is from fp32's values: a candidate further away must be faster
# by LESS_EXACT_MARGIN than the best one closer to fp32.
EXACTNESS = {"fp32": 0, "bf16": 1, "int8": 2}
REFERENCE = "torch fp32"
# Raised when what qualifies changes, so that choices remembered under older rules are
# measured again (2: a re-check must cover the changes its format makes on the probe).
SEARCH_RULES = 2
UNSURE_PROBE = "rows of IN the cascade's first model is least sure of"


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: ``name`` as summaries show it, the backend, the dtype it
    computes in (None: the export's own), its number format, and the ``clsx export`` format
    it runs (None: the model directory itself)."""

    name: str
    backend: str
    dtype: str | None
    precision: str
    export_format: str | None = None


@dataclass(frozen=True)
class FormatChoice:
    """What ``--backend auto`` runs: the directory (the model or one of its cached exports),
    backend and dtype, why, and what was measured (candidate name -> figures)."""

    name: str
    directory: Path
    backend: str
    dtype: str | None
    reason: str
    measured: dict[str, dict[str, Any]]
    cached: bool = False


def candidates(decoder: bool) -> list[Candidate]:
    """torch fp32, vLLM fp32 (a decoder, where vLLM is installed), OpenVINO fp32 on the
    openvino export (where OpenVINO is installed), onnx, onnx-int8, openvino-int8 (where
    OpenVINO and nncf are), then torch, vLLM and OpenVINO in the CPU's native lower
    precisions; the reference comes first."""
    engines = ("torch", "vllm") if decoder and installed("vllm") else ("torch",)
    openvino = installed("openvino")

    def run(dtype: str) -> list[Candidate]:
        on_model = [Candidate(f"{engine} {dtype}", engine, dtype, dtype) for engine in engines]
        on_export = [Candidate(f"openvino {dtype}", "openvino", dtype, dtype, "openvino")]
        return on_model + (on_export if openvino else [])

    exported = [Candidate("onnx", "onnx", None, "fp32", "onnx"),
                Candidate("onnx-int8", "onnx", None, "int8", "onnx-int8")]
    if openvino and installed("nncf"):
        exported.append(Candidate("openvino-int8", "openvino", None, "int8", "openvino-int8"))
    lower = [candidate for dtype in native_low_precision("cpu") for candidate in run(dtype)]
    return [*run("fp32"), *exported, *lower]


def installed(package: str) -> bool:
    """Whether ``package`` (an optional engine or tool: vllm, openvino, nncf) can be
    imported here."""
    return importlib.util.find_spec(package) is not None


def choose_format(artifact: Artifact, options: RunnerOptions, texts: Sequence[str], *,
                  cache: Path | None = None, log: Log = silent, recorded: str | None = None,
                  recheck: bool = True, unsure: Callable[[], list[str]] | None = None,
                  **settings: Any) -> FormatChoice:
    """The candidate ``--backend auto`` runs ``artifact`` with on this CPU, measured on
    ``texts`` (the job's first texts: :data:`CALIBRATION_TEXTS` of them gate int8, the first
    :data:`PROBE_TEXTS` are timed) or remembered from an earlier run.

    ``recorded`` (the candidate a resumed job ran) is run again without measuring: the
    remembered choice where it is that one, else that candidate as it is, its export made
    again through its gate where the cache lost it. With ``recheck`` (the job re-checks:
    :mod:`clsx.auto.recheck`), a lower-precision candidate is timed with the share of rows
    its re-check would send to fp32 (its cut chosen on the probe texts beside torch fp32)
    re-scored at torch fp32's measured speed.
    ``settings`` are the job's :class:`~clsx.inference.classifier.Classifier` settings
    (``max_length``, ``long_text``, ``batch_tokens``, ...), so that the probe runs as the job will.
    ``unsure`` (a cascade's fallback model) gives the texts the cascade's first model is
    least sure of: those are timed instead of the first texts, since they are the rows the
    fallback model gets (and the rows a lower precision's re-check re-scores most), and
    the choice is remembered apart from the model's choice alone.
    """
    if not texts:
        raise ValueError("choose_format needs texts to measure on")
    cache = cache or cache_dir()
    model_fingerprint = artifact.fingerprint
    exports = cache / "exports" / model_fingerprint
    tried = candidates(artifact.manifest.is_decoder)
    max_length = settings.get("max_length") or artifact.manifest.max_length
    key = "|".join([model_fingerprint, f"max_length={max_length}", str(options.threads),
                    machine_description(), ",".join(c.name for c in tried),
                    f"recheck={recheck}", f"rules={SEARCH_RULES}"]
                   + (["for=unsure rows"] if unsure else []))
    choices = cache / "auto-format.json"
    by_name = {candidate.name: candidate for candidate in tried}
    remembered = read_choices(choices).get(key)
    if (remembered is not None and recorded in (None, remembered["name"])
            and _still_there(exports, by_name[remembered["name"]], model_fingerprint)):
        return _choice(artifact, exports, by_name[remembered["name"]], remembered["measured"],
                       cached=True)
    if recorded is not None:
        return _recorded(artifact, exports, by_name, recorded, texts, log)
    probe = (unsure() if unsure else list(texts))[:PROBE_TEXTS]
    measured = _measure(artifact, options, texts, probe, tried, exports, log, settings,
                        recheck)
    if unsure:
        for figures in measured.values():
            figures["probe"] = UNSURE_PROBE
    name = pick(measured)
    remember(choices, key, {"name": name, "measured": measured})
    return _choice(artifact, exports, by_name[name], measured)


def _recorded(artifact: Artifact, exports: Path, by_name: dict[str, Candidate], name: str,
              texts: Sequence[str], log: Log) -> FormatChoice:
    """The candidate ``name`` a resumed job ran, ready to run again (its export made anew
    if the cache lost it); refused where this machine does not offer it."""
    candidate = by_name.get(name)
    if candidate is None:
        raise ClsxError(f"cannot resume: the job ran {name}, chosen by --backend auto, which "
                        f"this machine does not offer ({', '.join(by_name)}); resume it where "
                        "it ran, or pass --overwrite to start over")
    if candidate.export_format is not None:
        _export(artifact, candidate, exports, texts, log)
    reason = "the format this job ran before it was interrupted"
    return FormatChoice(candidate.name, _directory(artifact, exports, candidate),
                        candidate.backend, candidate.dtype, reason, {}, cached=True)


def _export(artifact: Artifact, candidate: Candidate, exports: Path, texts: Sequence[str],
            log: Log) -> Path:
    """``candidate``'s export of ``artifact`` in the cache, made there (through its gate,
    int8 calibrated on the job's first texts) unless it is there already."""
    from clsx.export.cache import cached_export

    calibrated = {"calibration_texts": list(texts[:CALIBRATION_TEXTS])}
    return cached_export(artifact, candidate.export_format, exports / candidate.export_format,
                         log, **(calibrated if candidate.precision == "int8" else {}))


def pick(measured: dict[str, dict[str, Any]]) -> str:
    """The fastest candidate that passed its gate, a less exact one only when it is
    :data:`LESS_EXACT_MARGIN` times as fast as the best more exact one."""
    passed = sorted((name for name, m in measured.items() if m["qualifies"]),
                    key=lambda name: EXACTNESS[measured[name]["precision"]])
    best = passed[0]
    for name in passed[1:]:
        margin = (LESS_EXACT_MARGIN if EXACTNESS[measured[name]["precision"]]
                  > EXACTNESS[measured[best]["precision"]] else 1.0)
        if measured[name]["rows_per_s"] >= margin * measured[best]["rows_per_s"]:
            best = name
    return best


def explain(name: str, measured: dict[str, dict[str, Any]]) -> str:
    """Why ``name`` was chosen, in a few words: its speed against torch fp32 (and, for int8,
    its gate's label agreement)."""
    chosen = measured[name]
    if name == REFERENCE:
        return f"nothing that passed its gate was {LESS_EXACT_MARGIN:.2f}x as fast"
    why = (f"{chosen['rows_per_s'] / measured[REFERENCE]['rows_per_s']:.2f}x torch fp32 on "
           f"{chosen['rows']} {chosen.get('probe', 'rows of IN')}")
    if chosen.get("rechecked_share") is not None:
        why += f" with {chosen['rechecked_share']:.1%} of them re-checked in fp32"
    if chosen.get("gate_agreement") is not None:
        why += f", labels equal to fp32's on {chosen['gate_agreement']:.2%} at its gate"
    return why


def rates(measured: dict[str, dict[str, Any]]) -> str:
    """Every candidate's rows/s, or why it could not run, in one line."""
    parts = []
    for name, figures in measured.items():
        if figures.get("refused"):
            parts.append(f"{name} refused by its gate")
            continue
        why_not = ""
        if figures.get("uncovered"):
            why_not = " (its re-check cannot cover it)"
        elif not figures["qualifies"]:
            why_not = " (outside its gate)"
        parts.append(f"{name} {figures['rows_per_s']:.1f}{why_not}")
    return "rows/s: " + ", ".join(parts)


def _measure(artifact: Artifact, options: RunnerOptions, texts: Sequence[str],
             probe: list[str], tried: list[Candidate], exports: Path, log: Log,
             settings: dict[str, Any], recheck: bool) -> dict[str, dict[str, Any]]:
    """Each candidate's figures, timed on ``probe`` (int8 exports calibrated on ``texts``)."""
    from clsx.inference.classifier import Classifier

    measured: dict[str, dict[str, Any]] = {}
    reference: np.ndarray | None = None
    seconds_of: dict[str, float] = {}
    for candidate in tried:
        figures: dict[str, Any] = {"precision": candidate.precision}
        measured[candidate.name] = figures
        stored_cut = None
        try:
            run_options = dataclasses.replace(options, dtype=candidate.dtype)
            if candidate.export_format is None:
                opened = Classifier.from_artifact(artifact, candidate.backend, run_options,
                                                  **settings)
            else:
                directory = _export(artifact, candidate, exports, texts, log)
                # Made from artifact as it is now (cached_export checked): no need to
                # fingerprint the parent again.
                opened = Classifier.from_artifact(open_artifact(directory, check_parent=False),
                                                  candidate.backend, run_options, **settings)
                figures["gate_agreement"] = _gate_agreement(directory)
                stored_cut = _stored_cut(directory)
        except ClsxError as exc:  # a gate that refused, an engine that cannot start here
            figures.update(qualifies=False, refused=str(exc))
            log(f"{candidate.name} refused: {exc}")
            continue
        with opened as classifier:
            logits, seconds = _timed(classifier, probe)
            rule = classifier.rule
        reference = logits if reference is None else reference
        seconds_of[candidate.name] = seconds
        parity = compare(reference, logits, rule)
        covered = True
        if recheck and candidate.precision in LOWER_PRECISIONS and rule.has_labels:
            cut = recheck_cut(rule, logits, reference, stored_cut)
            covered = covers(cut, perturbations(rule, logits, reference))
            rechecked = rechecked_rows(rule, logits, cut)
            share = float(rechecked.mean())
            # Those rows again, at the speed of the reference that re-checks them: OpenVINO
            # fp32 for OpenVINO's bf16 and int8 (its own fp32 IR), torch fp32 for the rest.
            rechecker = "openvino fp32" if candidate.backend == "openvino" else REFERENCE
            seconds += share * seconds_of.get(rechecker, seconds_of[REFERENCE])
            figures["rechecked_share"] = round(share, 4)
            # The labels the job gives are the gate's: re-checked rows take fp32's.
            checked = np.where(rechecked[:, None], reference, logits)
            parity = dataclasses.replace(
                parity, label_agreement=compare(reference, checked, rule).label_agreement)
        figures.update(rows=len(probe), rows_per_s=round(len(probe) / seconds, 1),
                       label_agreement=parity.label_agreement,
                       max_prob_diff=parity.max_prob_diff,
                       qualifies=covered and _passes(candidate, parity))
        if not covered:  # its labels would not be fp32's: the re-check misses some
            figures["uncovered"] = True
        log(f"{candidate.name}: {figures['rows_per_s']} rows/s on {len(probe)} rows")
    return measured


def recheck_cut(rule: DecisionRule, fast: np.ndarray, reference: np.ndarray,
                stored_cut: RecheckCut | None) -> RecheckCut:
    """The cut a job would re-check at: an export's own (``stored_cut``, measured at its
    gate), or else one chosen here on the ``fast`` and ``reference`` logits of the probe,
    as the job would choose it on its first texts."""
    return stored_cut or choose_cut(rule, fast, reference)


def covers(cut: RecheckCut, moved: np.ndarray) -> bool:
    """Whether a re-check at ``cut`` covers every change the probe shows its fast path
    could make: no row at risk on the cut's own sample, and no probe row moved further than
    the cut (``moved``: :func:`~clsx.quality.recheck.perturbations`). A cut capped at
    :data:`~clsx.quality.recheck.MAX_MARGIN` may still cover them (MiniLM's int8: moves
    up to 0.38 under a 0.5 cap); SmolLM2's openvino-int8 moved 1% of TREC's questions by
    more than 0.5, and left 0.24% of its labels other than fp32's."""
    return cut.at_risk == 0 and float(moved.max(initial=0.0)) <= cut.margin


def rechecked_rows(rule: DecisionRule, fast: np.ndarray, cut: RecheckCut) -> np.ndarray:
    """Which probe rows a job re-checking at ``cut`` would re-check."""
    return margins(rule, fast) < cut.margin


def _timed(classifier: Any, texts: list[str]) -> tuple[np.ndarray, float]:
    """The logits of ``texts`` and the best of :data:`PROBE_REPEATS` timings, after a
    warm-up (first-call allocations and kernel choices)."""
    classifier.predict(texts[:WARM_UP_TEXTS])
    prediction, seconds = best_time(classifier.predict_all, PROBE_REPEATS, texts)
    return prediction.logits, seconds


def _passes(candidate: Candidate, parity: ParityReport) -> bool:
    """Exports run as exported passed their gates when they were made; torch below fp32,
    vLLM and OpenVINO must pass the dtype gate
    (:func:`~clsx.quality.parity.passes_dtype_gate`) on the probe texts."""
    if candidate.dtype is None or candidate.name == REFERENCE:
        return True
    return passes_dtype_gate(candidate.dtype, parity)


def _gate_agreement(directory: Path) -> float | None:
    """The int8 export's label agreement with fp32 on its calibration texts (None: fp32)."""
    return (_parity(directory).get("int8_calibration") or {}).get("label_agreement")


def _stored_cut(directory: Path) -> RecheckCut | None:
    """The re-check cut an int8 export stored at its gate (None: none), which a job running
    it re-checks at."""
    stored = _parity(directory).get(STORED)
    return None if stored is None else RecheckCut.from_json(stored)


def _parity(directory: Path) -> dict[str, Any]:
    manifest = Manifest.load(directory)
    return (manifest.parity if manifest is not None else None) or {}


def _still_there(exports: Path, candidate: Candidate, model_fingerprint: str) -> bool:
    """Whether a remembered choice can run as it was measured: its export (if any) is
    still in the cache and made from the model as it is now."""
    from clsx.export.cache import is_current_export

    return (candidate.export_format is None  # the model directory itself
            or is_current_export(exports / candidate.export_format, model_fingerprint))


def _directory(artifact: Artifact, exports: Path, candidate: Candidate) -> Path:
    """Where ``candidate`` runs from: the model directory, or its export in the cache."""
    return (artifact.path if candidate.export_format is None
            else exports / candidate.export_format)


def _choice(artifact: Artifact, exports: Path, candidate: Candidate,
            measured: dict[str, dict[str, Any]], cached: bool = False) -> FormatChoice:
    return FormatChoice(candidate.name, _directory(artifact, exports, candidate),
                        candidate.backend, candidate.dtype, explain(candidate.name, measured),
                        measured, cached)
