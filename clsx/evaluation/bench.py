"""``clsx bench``: the same rows through every backend in one process, against torch fp32."""

from __future__ import annotations

import gc
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from clsx.artifacts.artifact import Artifact, open_artifact
from clsx.auto.recheck import (
    SAMPLE_TEXTS,
    attach,
    cascade_sample_size,
    check_cascade,
    check_same_labels,
    fallback_cut,
    rechecks,
)
from clsx.auto.resolve import classifier_for
from clsx.errors import ClsxError
from clsx.evaluation.config import VARIANT_RUNS, VARIANTS, BenchConfig
from clsx.export.cache import cached_export
from clsx.export.config import INT8_FORMATS
from clsx.inference.classifier import Classifier, Fallback, Prediction
from clsx.inference.decisions import MULTI, MULTI_LABEL_SEPARATOR, DecisionRule
from clsx.inference.runners.tensorrt import require_tensorrt
from clsx.io import durable
from clsx.io.tables import encode_targets, read_table, read_texts
from clsx.log import Log, silent
from clsx.quality.parity import compare, decision_agreement
from clsx.quality.recheck import choose_cut

REFERENCE = "torch"
STATIC = "static"  # a static student's format and backend: its own reference
# The bench's own texts an onnx-int8 export calibrates on.
CALIBRATION_ROWS = 256


@dataclass(frozen=True)
class BenchRow:
    """One backend's measurement on the shared rows."""

    variant: str
    backend: str
    rows: int
    seconds: float
    rows_per_s: float
    tokens_per_s: float
    peak_rss_mb: float
    label_agreement: float | None
    per_label_agreement: float | None
    max_abs_diff: float
    speedup: float
    rechecked: float | None = None  # "X + re-check" rows: the share of rows re-checked
    accuracy: float | None = None  # against --label-column's gold labels (None: not given)
    compared: bool = False  # another model (--compare-model), not a backend of the model
    sent: float | None = None  # a cascade row: the share of rows sent to the benched model


def run_bench(config: BenchConfig, log: Log = silent) -> list[BenchRow]:
    """Measure each backend of ``config`` on the same rows of its data; torch fp32 always
    runs first as the reference.

    Label agreement is on the labels users get (the model's thresholds for multi-label).
    ``torch-bf16`` runs the same model directory in bf16 (native with AMX / AVX-512 BF16,
    emulated and slower than fp32 elsewhere). ONNX and OpenVINO variants are exported on the
    fly into ``config.exports_dir`` (a temporary directory when None) and reused there when
    the parent model has not changed (``openvino-bf16`` runs the ``openvino`` export in
    bf16). With ``config.recheck``, each variant below fp32 gets a second row, ``X +
    re-check``: the same classifier re-checking in fp32 (its reference:
    :func:`~clsx.auto.recheck.reference_opener`) the rows
    under the cut chosen on the first :data:`~clsx.auto.recheck.SAMPLE_TEXTS` rows beside
    the reference's logits (:mod:`clsx.quality.recheck`).
    """
    variants, options = config.backends, config.runner_options()
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ClsxError(f"unknown backend {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    if "tensorrt" in variants:  # before minutes of exporting and measuring the others
        require_tensorrt("--backends tensorrt", options.device)
    texts = read_texts(config.data, config.text_column, config.rows)
    model_dir, batch_tokens = config.model, config.batch_tokens
    first = open_artifact(model_dir)
    compared = [open_artifact(other) for other in config.compare_models]
    for other in compared:
        check_same_labels(first, other, "--compare-model")
    if config.cascade_agreement is not None:
        check_cascade(first, "--cascade-agreement")
    first_rule = DecisionRule.of(first.manifest)
    gold = _gold(config, first_rule, len(texts))
    ordered = [REFERENCE, *[v for v in dict.fromkeys(variants) if v != REFERENCE]]
    static = first.manifest.format == STATIC
    if static:  # its numpy runner is its fp32 reference; it has no export or other dtype
        log(f"bench: {model_dir} is a static model: it runs on the static backend only")
        ordered = [STATIC]
    with _exports_dir(config.exports_dir) as cache:
        reference: np.ndarray | None = None
        rows: list[BenchRow] = []
        for variant in ordered:
            export_format, dtype = VARIANT_RUNS.get(variant, (None, None))
            variant_options = replace(options, dtype=dtype)
            if export_format is None:
                directory, backend = model_dir, STATIC if static else "torch"
            else:
                # int8 calibrates on the bench's first texts (decoders need real texts);
                # the gate is off: the bench reports the agreement itself.
                gates = ({"min_agreement": 0.0, "calibration_texts":
                          [t for t in texts[:CALIBRATION_ROWS] if t is not None]}
                         if export_format in INT8_FORMATS else {})
                directory = cached_export(
                    model_dir, export_format, cache / export_format,
                    lambda line: log(f"bench: {line}"), **gates)
                backend = "auto"
            log(f"bench: running {variant} on {len(texts)} rows")
            with _peak_rss() as peak, classifier_for(
                    open_artifact(directory), backend, variant_options,
                    batch_tokens=batch_tokens) as classifier:
                prediction, seconds = _timed(classifier, texts)
                reference = prediction.logits if reference is None else reference
                rows.append(_row(variant, classifier, texts, prediction, seconds, reference,
                                 peak(), rows, gold))
                if config.recheck and rechecks(classifier):
                    sample = slice(0, SAMPLE_TEXTS)
                    cut = choose_cut(classifier.rule, prediction.logits[sample],
                                     reference[sample])
                    attach(classifier, cut.margin)
                    log(f"bench: running {variant} + re-check (margin < {cut.margin:.3g})")
                    prediction, seconds = _timed(classifier, texts)
                    rows.append(_row(f"{variant} + re-check", classifier, texts, prediction,
                                     seconds, reference, peak(), rows, gold))
            del classifier, prediction
            gc.collect()
        for artifact in compared:
            log(f"bench: running {artifact.path} (--backend auto) on {len(texts)} rows")
            with _peak_rss() as peak, classifier_for(artifact, "auto", options,
                                                     batch_tokens=batch_tokens) as classifier:
                prediction, seconds = _timed(classifier, texts)
                rows.append(replace(_row(f"{artifact.path.name} (auto)", classifier, texts,
                                         prediction, seconds, reference, peak(), rows, gold,
                                         first_rule), compared=True))
            gc.collect()
        if config.cascade_agreement is not None:
            for artifact in compared:
                rows.append(_cascade_row(artifact, first, config, texts, reference, rows,
                                         gold, log))
                gc.collect()
    return rows


def _cascade_row(artifact: Artifact, fallback: Artifact, config: BenchConfig,
                 texts: list[str | None], reference: np.ndarray, before: Sequence[BenchRow],
                 gold: np.ndarray | None, log: Log) -> BenchRow:
    """``artifact`` as a cascade's first model sending its unsure rows to ``fallback`` (the
    benched model), both with ``--backend auto``, at the cut that agrees with ``fallback``
    alone on ``config.cascade_agreement`` of the first rows (as many as ``batch-predict
    --fallback-model`` samples: :func:`~clsx.auto.recheck.cascade_sample_size`)."""
    options, batch_tokens = config.runner_options(), config.batch_tokens
    size = cascade_sample_size(config.cascade_agreement, len(texts))
    sample = [text for text in texts[:size] if text is not None]
    with _peak_rss() as peak, classifier_for(artifact, "auto", options,
                                             batch_tokens=batch_tokens) as classifier:
        classifier.fallback = Fallback(0.0, classifier_for(fallback, "auto", options,
                                                           batch_tokens=batch_tokens))
        cut = fallback_cut(classifier, sample, config.cascade_agreement)
        classifier.fallback.margin = 0.0 if cut is None else cut.margin
        name = f"{artifact.path.name} -> {fallback.path.name} (cascade)"
        log(f"bench: running {name} (margin < {classifier.fallback.margin:.3g})")
        prediction, seconds = _timed(classifier, texts)
        return replace(_row(name, classifier, texts, prediction, seconds, reference, peak(),
                            before, gold, DecisionRule.of(fallback.manifest)), compared=True)


def _timed(classifier: Classifier, texts: list[str | None]) -> tuple[Prediction, float]:
    """``classifier``'s prediction of ``texts`` and its wall time, after a warm-up (first-call
    allocations and kernels; a re-check's reference loads there)."""
    classifier.predict(texts[:64])
    started = time.perf_counter()
    prediction = classifier.predict_all(texts)
    return prediction, time.perf_counter() - started


def _row(variant: str, classifier: Classifier, texts: list[str | None],
         prediction: Prediction, seconds: float, reference: np.ndarray, peak_rss: int,
         before: Sequence[BenchRow], gold: np.ndarray | None = None,
         reference_rule: DecisionRule | None = None) -> BenchRow:
    """One row of the table: ``prediction`` against the reference logits (those of another
    model, decided by its ``reference_rule``, for a compared model) and the ``gold``
    decisions (None: no labels)."""
    parity = compare(reference, prediction.logits, classifier.rule)
    texted = ~np.isnan(reference).any(axis=1)  # null texts' rows are left out
    decided = classifier.rule.decide(prediction.logits)
    if reference_rule is not None:  # another model: its own thresholds decide its rows
        agreement, per_label = decision_agreement(reference_rule.decide(reference)[texted],
                                                  decided[texted],
                                                  reference_rule.problem_type == MULTI)
        parity = replace(parity, label_agreement=agreement, per_label_agreement=per_label)
    baseline = before[0].rows_per_s if before else len(texts) / seconds
    present = max(prediction.counts.rows - prediction.counts.nulls, 1)
    return BenchRow(
        variant=variant,
        backend=classifier.description,
        rows=len(texts),
        seconds=round(seconds, 3),
        rows_per_s=round(len(texts) / seconds, 1),
        tokens_per_s=round(prediction.counts.tokens / seconds, 1),
        peak_rss_mb=round(peak_rss / 2**20, 1),
        label_agreement=parity.label_agreement,
        per_label_agreement=parity.per_label_agreement,
        max_abs_diff=parity.max_abs_diff,
        speedup=round(len(texts) / seconds / baseline, 2),
        rechecked=(round(prediction.counts.rechecked / present, 4)
                   if classifier.recheck is not None else None),
        sent=(round(prediction.counts.fallback / present, 4)
              if classifier.fallback is not None else None),
        accuracy=(None if gold is None
                  else decision_agreement(gold[texted], decided[texted], False)[0]),
    )


def _gold(config: BenchConfig, rule: DecisionRule, rows: int) -> np.ndarray | None:
    """The decisions ``--label-column`` holds for the first ``rows`` rows (label ids;
    multi-hot rows for multi-label, labels joined by commas), encoded as training reads
    labels; None without the option or for a regression model."""
    if config.label_column is None or not rule.has_labels:
        return None
    values = read_table(config.data, [config.label_column], rows).column(
        config.label_column).to_pylist()
    targets, _ = encode_targets(values, rule.problem_type, config.data, config.label_column,
                                labels=rule.labels, separator=MULTI_LABEL_SEPARATOR)
    return targets


def format_table(rows: Sequence[BenchRow]) -> str:
    """A fixed-width table of the rows for the terminal."""
    header = ("variant", "backend", "rows/s", "tokens/s", "peak RSS MB", "agreement",
              "max |dlogit|", "x torch")
    body = [
        (r.variant, r.backend, f"{r.rows_per_s:.1f}", f"{r.tokens_per_s:.0f}",
         f"{r.peak_rss_mb:.0f}",
         agreement_text(r),
         f"{r.max_abs_diff:.2e}", f"{r.speedup:.2f}")
        for r in rows
    ]
    if any(r.accuracy is not None for r in rows):
        header += ("accuracy",)
        body = [(*line, "n/a" if r.accuracy is None else f"{r.accuracy:.2%}")
                for line, r in zip(body, rows, strict=True)]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def agreement_text(row: BenchRow) -> str:
    """Rows whose decision agrees; multi-label adds the share of agreeing (row, label) pairs;
    a re-check row the share of rows it re-checked."""
    if row.label_agreement is None:
        return "n/a"
    text = f"{row.label_agreement:.2%}"
    if row.per_label_agreement is not None:
        text += f" sets, {row.per_label_agreement:.2%} labels"
    if row.rechecked is not None:
        text += f" ({row.rechecked:.1%} re-checked)"
    if row.sent is not None:
        text += f" ({row.sent:.1%} sent)"
    return text


def write_json(results: Sequence[BenchRow], path: Path, **context: object) -> None:
    """Write the results and the run's context (model, data, machine) as JSON."""
    payload = {**context, "results": [asdict(r) for r in results]}
    durable.write_file(path, json.dumps(payload, indent=2, default=str) + "\n")


@contextmanager
def _exports_dir(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="clsx-bench-") as temporary:
        yield Path(temporary)


@contextmanager
def _peak_rss(interval: float = 0.05) -> Iterator[Callable[[], int]]:
    """Sample this process's resident set size in a thread; yields a getter for the peak."""
    import psutil

    process = psutil.Process()
    peak = [process.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)
