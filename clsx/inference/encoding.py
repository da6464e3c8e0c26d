"""Texts to token ids, exactly as at training time: the template, then the long-text cut.

One :class:`TextEncoder` per model; it turns a window of texts into an :class:`EncodedWindow`
(one model input per row, or several per long row with ``--long-text window``), which the
scheduler (:mod:`clsx.inference.scheduler`) batches and a runner predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clsx.artifacts.long_text import LongText
from clsx.artifacts.manifest import Manifest
from clsx.errors import ClsxError
from clsx.inference.windows import first_inputs


@dataclass(frozen=True)
class EncodedWindow:
    """Token ids for one window of rows: one model input per row, or several per long row.

    ``ids`` holds the model inputs in row order, None where the text was null. ``pieces[i]``
    is how many consecutive inputs row ``i`` has (``--long-text window``); None means exactly
    one each. ``texts`` are the rows' texts where the encoder kept them (a fallback model,
    with a tokenizer of its own, classifies some rows again from them).
    """

    ids: list[list[int] | None]
    truncated: int
    pieces: np.ndarray | None = None
    texts: Sequence[str | None] | None = None

    @property
    def tokens(self) -> int:
        return sum(len(row) for row in self.ids if row is not None)

    @property
    def nulls(self) -> int:
        """Rows whose text was null (each has one input, None)."""
        return sum(1 for row in self.ids if row is None)

    @property
    def rows(self) -> int:
        return len(self.ids) if self.pieces is None else len(self.pieces)

    def select(self, rows: np.ndarray) -> EncodedWindow:
        """The window of ``rows`` only (indices in row order), with all their inputs."""
        if self.pieces is None:
            return EncodedWindow([self.ids[i] for i in rows], 0)
        starts = first_inputs(self.pieces)
        ids = [self.ids[j] for i in rows for j in range(starts[i], starts[i] + self.pieces[i])]
        return EncodedWindow(ids, 0, self.pieces[rows])

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
            return EncodedWindow(ids, 0, texts=texts)
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
        return EncodedWindow(ids, truncated, texts=texts)

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
        return EncodedWindow(ids, truncated, counts if len(ids) != len(texts) else None, texts)

    def _apply_template(self, text: str | None) -> str:
        return self.template.replace("{text}", text) if self.template else text
