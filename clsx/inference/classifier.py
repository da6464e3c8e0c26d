"""One classifier: texts in, the decisions users get out.

A :class:`Classifier` owns everything between a text and its output row: the model
directory (artifact), the backend (runner), the encoder (template, truncation, long-text
cut), the combination of a long text's windows, the decision rule (thresholds) and the
output columns. Every path that classifies goes through it: ``batch-predict`` (the local
engine and each Ray actor), ``eval``, ``bench``, every export gate and ``--backend auto``'s
dtype probe. None of them builds a runner or an encoder itself.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from clsx.artifacts.artifact import Artifact, open_artifact
from clsx.artifacts.manifest import Manifest
from clsx.inference.decisions import DecisionRule
from clsx.inference.encoding import EncodedWindow, TextEncoder
from clsx.inference.recheck import Recheck, margins, take_rows, unsure_rows
from clsx.inference.runners import RunnerOptions, load_runner
from clsx.inference.runners.base import Runner
from clsx.inference.scheduler import WINDOW_ROWS, predict_window_rows
from clsx.inference.windows import combine

T = TypeVar("T")
WINDOWS_FIELD = pa.field("windows", pa.int32())  # model inputs per row (--windows-column)


@dataclass
class Counts:
    """What classifying some rows took: rows, tokens seen by the model, null texts, texts
    cut to fit, model inputs (``windows``: more than rows with ``--long-text window``), rows
    re-scored by the fp32 reference (``rechecked``, see :mod:`clsx.inference.recheck`) and
    those whose decision the re-check changed (``recheck_changed``), rows sent to a
    cascade's fallback model (``fallback``) and those of them its own re-check re-scored
    and changed (``fallback_rechecked``, ``fallback_recheck_changed``)."""

    rows: int = 0
    tokens: int = 0
    nulls: int = 0
    truncated: int = 0
    windows: int = 0
    rechecked: int = 0
    recheck_changed: int = 0
    fallback: int = 0
    fallback_rechecked: int = 0
    fallback_recheck_changed: int = 0

    def add(self, other: Counts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclass(frozen=True)
class Prediction:
    """One batch of rows classified: raw logits (NaN rows for null texts), the output columns
    (in :func:`output_fields` order) and the counters."""

    logits: np.ndarray
    columns: list[pa.Array]
    counts: Counts

    @staticmethod
    def concat(parts: Sequence[Prediction]) -> Prediction:
        """The rows of ``parts`` one after another."""
        counts = Counts()
        for part in parts:
            counts.add(part.counts)
        columns = [pa.concat_arrays([part.columns[i] for part in parts])
                   for i in range(len(parts[0].columns))]
        return Prediction(np.concatenate([part.logits for part in parts]), columns, counts)


def output_fields(manifest: Manifest, windows_column: bool = False, prefix: str = ""
                  ) -> list[pa.Field]:
    """The prediction columns a classifier of ``manifest`` writes (known before it loads),
    each named with ``prefix`` in front (``--output-prefix``)."""
    fields = DecisionRule.of(manifest).fields()
    fields = [*fields, WINDOWS_FIELD] if windows_column else fields
    return [field.with_name(prefix + field.name) for field in fields]


@dataclass
class Fallback:
    """A cascade's second model: rows whose first-model margin is under ``margin`` take
    ``classifier``'s output (same labels and problem type, checked before it opens)."""

    margin: float
    classifier: Classifier

    def close(self) -> None:
        self.classifier.close()


class Classifier:
    """A model ready to classify: windows of texts in, :class:`Prediction` out."""

    def __init__(
        self,
        artifact: Artifact,
        runner: Runner,
        *,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        long_text: dict[str, Any] | None = None,
        threshold: float | None = None,
        windows_column: bool = False,
        recheck: Recheck | None = None,
        fallback: Fallback | None = None,
    ) -> None:
        self.artifact = artifact
        self.runner = runner
        self.batch_tokens = batch_tokens or runner.batch_tokens
        self.encoder = TextEncoder(artifact.tokenizer, artifact.manifest, max_length,
                                   artifact.manifest.long_text.override(**(long_text or {})))
        self.rule = DecisionRule.of(artifact.manifest, threshold)
        self.windows_column = windows_column
        self.recheck = recheck
        self.fallback = fallback

    @classmethod
    def open(cls, model: str | Path, backend: str = "auto",
             options: RunnerOptions | None = None, *, allow_pickle: bool = False,
             **settings: Any) -> Classifier:
        """Open a model directory with ``backend`` (see :meth:`from_artifact`).

        ``allow_pickle`` permits pickle (``.bin``) weights, which can run code when loaded.
        """
        return cls.from_artifact(open_artifact(model, allow_pickle=allow_pickle), backend,
                                 options, **settings)

    @classmethod
    def from_artifact(cls, artifact: Artifact, backend: str = "auto",
                      options: RunnerOptions | None = None, *, max_length: int | None = None,
                      **settings: Any) -> Classifier:
        """Load the runner for ``artifact``: ``auto`` is the backend of its format, in that
        backend's default dtype unless ``options`` names one (the dtype ``--backend auto``
        measures is chosen above, by :func:`clsx.auto.resolve.classifier_for`).

        ``max_length`` (None: ``options.max_length``, else the manifest's) bounds both the
        encoder's cut and the runner (vLLM's ``max_model_len``, the TensorRT profile).
        ``settings`` are the other keyword arguments of the constructor: ``batch_tokens``,
        ``long_text`` (fields of the manifest's :class:`~clsx.artifacts.long_text.LongText` to
        override; None values keep the manifest's), ``threshold`` (multi-label, for every
        label; None: the model's tuned ones), ``windows_column``, ``recheck`` (re-score
        the rows under a margin with a reference: :mod:`clsx.inference.recheck`) and
        ``fallback`` (send them to another model).
        """
        options = options or RunnerOptions()
        if max_length is None:
            max_length = options.max_length
        options = dataclasses.replace(options, max_length=max_length)
        return cls(artifact, load_runner(artifact, backend, options), max_length=max_length,
                   **settings)

    @property
    def manifest(self) -> Manifest:
        return self.artifact.manifest

    @property
    def description(self) -> str:
        """The backend as summaries show it, e.g. ``onnx (onnx-int8, cpu)``."""
        return self.runner.description

    def predict(self, texts: Sequence[str | None]) -> Prediction:
        """Classify one window of texts (None: a null text, which gets null outputs)."""
        return self.predict_encoded(self.encoder.encode(texts))

    def predict_encoded(self, window: EncodedWindow) -> Prediction:
        """Classify an already encoded window; a row cut into several inputs gets its
        inputs' logits combined; with a re-check, the rows under its margin take the
        reference's logits; with a fallback, the rows under its margin take the fallback
        model's output (its logits and columns)."""
        logits = self.logits(window)
        counts = Counts(rows=window.rows, tokens=window.tokens, nulls=window.nulls,
                        truncated=window.truncated, windows=len(window.ids) - window.nulls)
        if self.recheck is not None:
            logits = self._recheck(window, logits, self.recheck, counts)
        columns = self.rule.columns(logits)
        if self.windows_column:
            columns.append(pa.array(window.inputs_per_row(), pa.int32()))
        if self.fallback is not None:
            unsure = unsure_rows(self.rule, logits, self.fallback.margin)
            if len(unsure):
                if window.texts is None:
                    raise ValueError("a fallback model needs the window's texts")
                other = self.fallback.classifier.predict([window.texts[i] for i in unsure])
                counts.fallback += len(unsure)
                counts.fallback_rechecked += other.counts.rechecked
                counts.fallback_recheck_changed += other.counts.recheck_changed
                logits = logits.copy()
                logits[unsure] = other.logits
                columns = take_rows(columns, other.columns, unsure)
        return Prediction(logits, columns, counts)

    def logits(self, window: EncodedWindow, runner: Runner | None = None) -> np.ndarray:
        """One row of logits per row of ``window`` from ``runner`` (default: this
        classifier's; another, such as the re-check's reference, in its own batch size),
        without re-check."""
        batch_tokens = self.batch_tokens if runner is None else runner.batch_tokens
        runner = runner or self.runner
        logits = predict_window_rows(window, runner.predict_rows, self.manifest.num_labels,
                                     batch_tokens, runner.max_batch_rows)
        if window.pieces is not None:
            logits = combine(logits, window.pieces, self.encoder.long_text.aggregate,
                             self.manifest.problem_type)
        return logits

    def _recheck(self, window: EncodedWindow, logits: np.ndarray, recheck: Recheck,
                 counts: Counts) -> np.ndarray:
        """``logits`` with the unsure rows re-scored by the reference; counts them. In a
        cascade, rows under the fallback's cut by more than δ go to the fallback model
        whatever the reference would say (the re-check trusts the fast path to within δ),
        so they are left as they are."""
        margin = margins(self.rule, logits)
        unsure = margin < recheck.margin
        if self.fallback is not None:
            unsure &= margin >= self.fallback.margin - recheck.margin
        unsure = np.flatnonzero(unsure)
        if not len(unsure):
            return logits
        exact = self.logits(window.select(unsure), recheck.reference())
        counts.rechecked += len(unsure)
        counts.recheck_changed += int(self.rule.differing(logits[unsure], exact).sum())
        logits = logits.copy()
        logits[unsure] = exact
        return logits

    def stream(self, items: Iterable[tuple[T, Sequence[str | None]]]
               ) -> Iterator[tuple[T, Prediction]]:
        """Classify each ``(payload, texts)`` window; the next window is encoded in a thread
        while the model runs. The payload (e.g. the record batch the texts came from) is
        handed back unchanged."""
        encoded = prefetch((payload, self.encoder.encode(texts)) for payload, texts in items)
        for payload, window in encoded:
            yield payload, self.predict_encoded(window)

    def predict_all(self, texts: Sequence[str | None], window_rows: int = WINDOW_ROWS
                    ) -> Prediction:
        """Classify an in-memory list of texts, ``window_rows`` at a time."""
        windows = ((None, texts[i : i + window_rows]) for i in range(0, len(texts), window_rows))
        parts = [prediction for _, prediction in self.stream(windows)]
        return Prediction.concat(parts) if parts else self.predict([])

    def close(self) -> None:
        """Release what the backend holds beyond memory (vLLM's engine process), and the
        re-check's reference and the fallback model."""
        self.runner.close()
        for helper in (self.recheck, self.fallback):
            if helper is not None:
                helper.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def prefetch(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Produce ``items`` in a background thread, ``depth`` ahead of the consumer.

    Reading Parquet and tokenising (both release the GIL) then overlap with the model.
    An exception in the producer is re-raised in the consumer.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(("item", item))
            slots.put(("done", done))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slots.put(("error", exc))

    thread = threading.Thread(target=produce, name="clsx-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "error":
                raise value
            if kind == "done":
                return
            yield value
    finally:
        stop.set()
        # An abandoned generator may be closed by the garbage collector in any thread,
        # the producer's included, which stops at its next item and cannot join itself.
        while thread.is_alive() and threading.current_thread() is not thread:
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
