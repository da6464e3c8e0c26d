"""Static backend: a static student (``clsx distill --student static``) in numpy.

No attention: a row's features are the mean of its tokens' static vectors (special tokens
have zero vectors, so they add nothing), L2-normalised, beside the same mean over the row's
first few tokens (its *opening*, where a question's "how many" or a request's verb sits),
and its logits come from a small head on them (one hidden ReLU layer, then the output
layer). The vectors, the head and the opening lengths live in ``static.safetensors``; see
:mod:`clsx.train.static_student` for how they are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clsx.artifacts.artifact import STATIC_FILE, Artifact
from clsx.errors import ClsxError
from clsx.inference.runners.base import Runner, RunnerOptions

# Tensor names in static.safetensors, and the metadata key of the opening lengths.
VECTORS = "vectors"
OPENINGS_KEY = "openings"
HIDDEN_WEIGHT, HIDDEN_BIAS, WEIGHT, BIAS = ("hidden.weight", "hidden.bias", "head.weight",
                                            "head.bias")


@dataclass(frozen=True)
class Head:
    """A static model's head: a hidden ReLU layer (``hidden_weight`` hidden x dims,
    ``hidden_bias``), then the output layer (``weight`` labels x hidden, ``bias``)."""

    hidden_weight: np.ndarray
    hidden_bias: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    def logits(self, features: np.ndarray) -> np.ndarray:
        """The logits of pooled ``features``."""
        hidden = np.maximum(features @ self.hidden_weight.T + self.hidden_bias, 0.0)
        return hidden @ self.weight.T + self.bias


@dataclass(frozen=True)
class StaticModel:
    """Token vectors (vocabulary x dims; special tokens' rows zero), the head, and the
    opening lengths pooled beside the whole row (:func:`features`; none in a model saved
    before openings existed)."""

    vectors: np.ndarray
    head: Head
    openings: tuple[int, ...] = ()

    @classmethod
    def load(cls, directory: Path) -> StaticModel:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        path = str(Path(directory) / STATIC_FILE)
        tensors = load_file(path)
        with safe_open(path, "numpy") as stored:
            openings = (stored.metadata() or {}).get(OPENINGS_KEY, "")
        names = (VECTORS, HIDDEN_WEIGHT, HIDDEN_BIAS, WEIGHT, BIAS)
        missing = [name for name in names if name not in tensors]
        if missing:
            raise ClsxError(f"{directory / STATIC_FILE} lacks {', '.join(missing)}; distil "
                            "the static student again")
        return cls(tensors[VECTORS], Head(*(tensors[name] for name in names[1:])),
                   tuple(int(length) for length in openings.split(",") if length))

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        head = self.head
        save_file({VECTORS: self.vectors, HIDDEN_WEIGHT: head.hidden_weight,
                   HIDDEN_BIAS: head.hidden_bias, WEIGHT: head.weight, BIAS: head.bias},
                  str(Path(directory) / STATIC_FILE),
                  metadata={OPENINGS_KEY: ",".join(map(str, self.openings))})

    def features(self, rows: list[list[int]]) -> np.ndarray:
        """Each row's features (:func:`features`)."""
        return features(self.vectors, rows, self.openings)

    def logits(self, rows: list[list[int]]) -> np.ndarray:
        return self.head.logits(self.features(rows))


def features(vectors: np.ndarray, rows: list[list[int]], openings: tuple[int, ...]
             ) -> np.ndarray:
    """Each row's mean token vector (:func:`pooled`), then for each length ``k`` of
    ``openings`` the mean over its first ``k`` tokens after the leading [CLS] (row[:k + 1]:
    [CLS] has a zero vector), concatenated and scaled to unit norm."""
    if not openings:
        return pooled(vectors, rows)
    parts = [pooled(vectors, rows)] + [pooled(vectors, [row[:k + 1] for row in rows])
                                       for k in openings]
    return (np.hstack(parts) / np.sqrt(len(parts))).astype(np.float32)


def pooled(vectors: np.ndarray, rows: list[list[int]]) -> np.ndarray:
    """The L2-normalised mean of ``vectors`` over each row's token ids. The sum stands for
    the mean: normalising removes the count, and special tokens, whose vectors are zero,
    add nothing (a row of special tokens only is all zeros)."""
    if not rows:
        return np.zeros((0, vectors.shape[1]), np.float32)
    lengths = np.fromiter((len(row) for row in rows), np.int64, len(rows))
    ids = np.fromiter((token for row in rows for token in row), np.int64, int(lengths.sum()))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    sums = np.add.reduceat(vectors[ids], starts, axis=0)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


class StaticRunner(Runner):
    """Runs a static student: no padding, one call per window."""

    formats = ("static",)
    batch_tokens = 1 << 22  # no attention: a whole window is one cheap batch

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        super().__init__(artifact, options)
        if options.device == "cuda":
            raise ClsxError("the static backend runs on the CPU (numpy); drop --device cuda")
        self.model = StaticModel.load(artifact.path)

    def predict_rows(self, rows: list[list[int]]) -> np.ndarray:
        return self.model.logits(rows).astype(np.float32)

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        rows = [list(ids[mask.astype(bool)]) for ids, mask in zip(input_ids, attention_mask,
                                                                  strict=True)]
        return self.predict_rows(rows)

    @property
    def description(self) -> str:
        dims = self.model.vectors.shape[1]
        return f"static ({dims} dims, numpy, cpu)"
