"""Batching: an encoded window cut into length-sorted batches by padded-token budget, each
predicted, and the results put back in row order.

Shared by every backend: a runner only ever sees one batch of token ids, padded by
:meth:`Runner.predict_rows` (or, for vLLM, handed over unpadded). Rows are sorted by length
inside a window so that each batch pads little, and results are written back to their
original positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from clsx.inference.encoding import EncodedWindow

WINDOW_ROWS = 4096  # rows tokenised and length-sorted together


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


def predict_window_rows(
    window: EncodedWindow,
    predict_rows: Callable[[list[list[int]]], np.ndarray],
    num_labels: int,
    batch_tokens: int,
    max_rows: int | None = None,
) -> np.ndarray:
    """Logits for every input of ``window`` in its original order; NaN where text was null.

    ``predict_rows`` takes one length-sorted batch (longest first) of unpadded token-id lists,
    at most ``batch_tokens`` padded tokens and ``max_rows`` rows; padding, where a backend
    needs it, is the callee's business.
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
