"""Static backend: a static student (``clsx distill --student static``) in numpy.

No attention: a row's features are the mean of its tokens' static vectors (special tokens
have zero vectors, so they add nothing), L2-normalised, and its logits come from a small
head on them (one hidden ReLU
layer, then the output layer). The vectors and the head live in ``static.safetensors``; see
:mod:`clsx.train.static_student` for how they are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clsx.artifacts.artifact import STATIC_FILE, Artifact
from clsx.errors import ClsxError
from clsx.inference.runners.base import Runner, RunnerOptions

# Tensor names in static.safetensors.
VECTORS = "vectors"
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
    """Token vectors (vocabulary x dims; special tokens' rows zero) and the head."""

    vectors: np.ndarray
    head: Head

    @classmethod
    def load(cls, directory: Path) -> StaticModel:
        from safetensors.numpy import load_file

        tensors = load_file(str(Path(directory) / STATIC_FILE))
        names = (VECTORS, HIDDEN_WEIGHT, HIDDEN_BIAS, WEIGHT, BIAS)
        missing = [name for name in names if name not in tensors]
        if missing:
            raise ClsxError(f"{directory / STATIC_FILE} lacks {', '.join(missing)}; distil "
                            "the static student again")
        return cls(tensors[VECTORS], Head(*(tensors[name] for name in names[1:])))

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        head = self.head
        save_file({VECTORS: self.vectors, HIDDEN_WEIGHT: head.hidden_weight,
                   HIDDEN_BIAS: head.hidden_bias, WEIGHT: head.weight, BIAS: head.bias},
                  str(Path(directory) / STATIC_FILE))

    def features(self, rows: list[list[int]]) -> np.ndarray:
        """Each row's mean token vector, L2-normalised (:func:`pooled`)."""
        return pooled(self.vectors, rows)

    def logits(self, rows: list[list[int]]) -> np.ndarray:
        return self.head.logits(self.features(rows))


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
