"""A classifier ready to run: artifact + backend + encoder, windows of texts in, logits out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from clsx.artifact import Artifact, open_artifact
from clsx.long_text import LongText, combine
from clsx.runners import RunnerOptions, load_runner
from clsx.runners.base import Runner
from clsx.scheduler import EncodedWindow, TextEncoder, predict_window_rows, prefetch

T = TypeVar("T")


class Pipeline:
    """Tokenises windows of texts (one window ahead, in a thread) and predicts their logits."""

    def __init__(
        self,
        artifact: Artifact,
        runner: Runner,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        long_text: LongText | None = None,
    ) -> None:
        self.artifact = artifact
        self.runner = runner
        self.batch_tokens = batch_tokens or runner.batch_tokens
        self.encoder = TextEncoder(artifact.tokenizer, artifact.manifest, max_length, long_text)

    @classmethod
    def open(
        cls,
        model: str | Path,
        backend: str = "auto",
        options: RunnerOptions | None = None,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        allow_pickle: bool = False,
        long_text: dict[str, Any] | None = None,
    ) -> Pipeline:
        """Open a model directory with the given backend (``auto``: the one for its format,
        and for a PyTorch model the fastest dtype that passes parity here; see
        :mod:`clsx.autoselect`).

        ``allow_pickle`` permits pickle (``.bin``) weights, which can run code when loaded.
        ``long_text`` overrides fields of the manifest's :class:`LongText` (``strategy``,
        ``stride``, ``aggregate``; None values keep the manifest's).
        """
        artifact = open_artifact(model, allow_pickle=allow_pickle)
        options = dataclasses.replace(options or RunnerOptions(), max_length=max_length)
        if backend == "auto" and artifact.manifest.format == "torch" and options.dtype is None:
            from clsx.autoselect import choose_dtype

            options = dataclasses.replace(options, dtype=choose_dtype(artifact, options).dtype)
        long = artifact.manifest.long_text.override(**(long_text or {}))
        return cls(artifact, load_runner(artifact, backend, options), batch_tokens, max_length,
                   long)

    def logits(self, window: EncodedWindow) -> np.ndarray:
        """Logits for an encoded window, rows in their original order (NaN for null texts);
        a row cut into several pieces gets its pieces' logits combined."""
        manifest = self.artifact.manifest
        logits = predict_window_rows(window, self.runner.predict_rows, manifest.num_labels,
                                     self.batch_tokens, self.runner.max_batch_rows)
        if window.pieces is None:
            return logits
        return combine(logits, window.pieces, self.encoder.long_text.aggregate,
                       manifest.problem_type)

    def run(
        self, items: Iterable[tuple[T, Sequence[str | None]]]
    ) -> Iterator[tuple[T, EncodedWindow, np.ndarray]]:
        """Encode and predict each ``(payload, texts)`` window; encoding overlaps prediction.

        The payload (e.g. the record batch the texts came from) is handed back unchanged.
        """
        encoded = prefetch((payload, self.encoder.encode(texts)) for payload, texts in items)
        for payload, window in encoded:
            yield payload, window, self.logits(window)

    def classify(self, texts: Sequence[str | None], window_rows: int = 4096) -> np.ndarray:
        """Logits for an in-memory list of texts."""
        return self.classify_counting(texts, window_rows)[0]

    def classify_counting(
        self, texts: Sequence[str | None], window_rows: int = 4096
    ) -> tuple[np.ndarray, int]:
        """Logits for an in-memory list of texts, and how many tokens the model saw."""
        chunks = ((None, texts[i : i + window_rows]) for i in range(0, len(texts), window_rows))
        parts, tokens = [], 0
        for _, window, logits in self.run(chunks):
            parts.append(logits)
            tokens += window.tokens
        empty = np.empty((0, self.artifact.manifest.num_labels), dtype=np.float32)
        return (np.concatenate(parts) if parts else empty), tokens
