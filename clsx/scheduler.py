"""Tokenise once, batch by padded-token budget, predict, restore order.

Shared by every backend: a runner only ever sees one batch of token ids, padded by
:meth:`Runner.predict_rows` (or, for vLLM, handed over unpadded). Rows are sorted by length
inside a window so that each batch pads little, and results are written back to their
original positions.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from clsx.errors import ClsxError
from clsx.long_text import LongText, first_inputs
from clsx.manifest import Manifest

T = TypeVar("T")


@dataclass(frozen=True)
class EncodedWindow:
    """Token ids for one window of rows: one model input per row, or several per long row.

    ``ids`` holds the model inputs in row order, None where the text was null. ``pieces[i]``
    is how many consecutive inputs row ``i`` has (``--long-text window``); None means exactly
    one each.
    """

    ids: list[list[int] | None]
    truncated: int
    pieces: np.ndarray | None = None

    @property
    def tokens(self) -> int:
        return sum(len(row) for row in self.ids if row is not None)

    @property
    def rows(self) -> int:
        return len(self.ids) if self.pieces is None else len(self.pieces)

    def inputs_per_row(self) -> np.ndarray:
        """How many model inputs each row became: 0 for a null text, else 1 or its windows."""
        counts = np.ones(self.rows, np.int32) if self.pieces is None else (
            self.pieces.astype(np.int32))
        counts[[self.ids[start] is None for start in first_inputs(counts)]] = 0
        return counts


class TextEncoder:
    """Applies the manifest's template and long-text strategy, exactly as at training time."""

    def __init__(self, tokenizer: Any, manifest: Manifest, max_length: int | None = None,
                 long_text: LongText | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = manifest.template
        self.max_length = max_length or manifest.max_length
        self.long_text = long_text or manifest.long_text
        # Where the text starts in the templated string: tokens from there on are the text's.
        self.text_start = len(self.template.partition("{text}")[0]) if self.template else 0
        # An empty text still needs one position to pool: the pad token, attended to.
        self.empty = [manifest.padding_id]

    def encode(self, texts: Sequence[str | None]) -> EncodedWindow:
        """Tokenise a window of texts in one batched call of the fast tokenizer."""
        if self.long_text.strategy != "truncate" or self.template:
            return self._encode_pieces(texts)
        present = [i for i, text in enumerate(texts) if text is not None]
        ids: list[list[int] | None] = [None] * len(texts)
        if not present:
            return EncodedWindow(ids, 0)
        batch = [self._apply_template(texts[i]) for i in present]
        encoded = self.tokenizer(
            batch,
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        truncated = sum(1 for enc in encoded.encodings if enc.overflowing)
        for i, row in zip(present, encoded["input_ids"], strict=True):
            ids[i] = row or self.empty
        return EncodedWindow(ids, truncated)

    def _encode_pieces(self, texts: Sequence[str | None]) -> EncodedWindow:
        """Tokenise whole, then cut only the text's own tokens, keeping the template's (and
        the special) tokens around every piece: ``head-tail``, ``window``, and ``truncate``
        with a template (the tokenizer's own truncation would cut the template's end, which
        a decoder's last-token head reads)."""
        present = [i for i, text in enumerate(texts) if text is not None]
        encoded = self.tokenizer(
            [self._apply_template(texts[i]) for i in present],
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        ) if present else {"input_ids": [], "offset_mapping": []}
        rows: dict[int, list[list[int]]] = {}
        truncated = 0
        for i, row, offsets in zip(present, encoded["input_ids"], encoded["offset_mapping"],
                                   strict=True):
            spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
            end = self.text_start + len(texts[i])
            inside = np.flatnonzero((spans[:, 1] > self.text_start) & (spans[:, 0] < end))
            first, last = (int(inside[0]), int(inside[-1]) + 1) if len(inside) else (len(row),) * 2
            room = self.max_length - first - (len(row) - last)
            if room < 1:
                raise ClsxError(f"the template takes {first + len(row) - last} of the "
                                f"{self.max_length} tokens of max_length; no room is left for "
                                "the text")
            pieces = self.long_text.cut(row[first:last], room)
            truncated += self.long_text.strategy != "window" and last - first > room
            rows[i] = [row[:first] + piece + row[last:] or self.empty for piece in pieces]
        per_row = [rows.get(i, [None]) for i in range(len(texts))]  # a null text: one None
        ids = [piece for pieces in per_row for piece in pieces]
        counts = np.array([len(pieces) for pieces in per_row], dtype=np.int64)
        return EncodedWindow(ids, truncated, counts if len(ids) != len(texts) else None)

    def _apply_template(self, text: str | None) -> str:
        return self.template.replace("{text}", text) if self.template else text


def plan_batches(lengths: np.ndarray, batch_tokens: int, max_rows: int | None = None
                 ) -> list[np.ndarray]:
    """Group row indices, longest first, so that rows x longest length <= ``batch_tokens``
    and, where ``max_rows`` is given, rows <= ``max_rows``.

    A row longer than the budget still gets a batch of its own.
    """
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, batch_tokens // max(longest, 1))
        if max_rows is not None:
            size = min(size, max_rows)
        batches.append(order[start : start + size])
        start += size
    return batches


def pad(rows: Sequence[list[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists into int64 ``input_ids`` and ``attention_mask`` arrays."""
    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def predict_window(
    window: EncodedWindow,
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    num_labels: int,
    pad_token_id: int,
    batch_tokens: int,
) -> np.ndarray:
    """Logits for every row of ``window`` in its original order; NaN rows where text was null.

    ``predict`` takes one padded batch (``input_ids``, ``attention_mask``).
    """
    return predict_window_rows(
        window, lambda rows: predict(*pad(rows, pad_token_id)), num_labels, batch_tokens
    )


def predict_window_rows(
    window: EncodedWindow,
    predict_rows: Callable[[list[list[int]]], np.ndarray],
    num_labels: int,
    batch_tokens: int,
    max_rows: int | None = None,
) -> np.ndarray:
    """Like :func:`predict_window`, but ``predict_rows`` takes the unpadded token-id lists.

    Each call gets one length-sorted batch (longest first) of at most ``batch_tokens``
    padded tokens and ``max_rows`` rows; padding, where a backend needs it, is the callee's
    business.
    """
    logits = np.full((len(window.ids), num_labels), np.nan, dtype=np.float32)
    present = np.array([i for i, row in enumerate(window.ids) if row is not None], dtype=np.int64)
    if len(present) == 0:
        return logits
    lengths = np.array([len(window.ids[i]) for i in present], dtype=np.int64)
    for batch in plan_batches(lengths, batch_tokens, max_rows):
        rows = present[batch]
        logits[rows] = predict_rows([window.ids[i] for i in rows])
    return logits


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
        while thread.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
