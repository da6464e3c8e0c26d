"""The interface every backend implements: logits for one already-tokenised batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from clsx.artifact import Artifact


@dataclass(frozen=True)
class RunnerOptions:
    """How a backend should use the hardware.

    ``device`` is ``cpu``, ``cuda`` or ``auto`` (CUDA when available); ``threads`` is the
    intra-op thread count, None for one per physical core.
    """

    device: str = "auto"
    threads: int | None = None


class Runner(ABC):
    """One backend. Scheduling, ordering, progress and writing live outside it.

    ``formats`` lists the artifact formats the backend can run; ``batch_tokens`` is the
    padded-token budget per batch that suits it when the user gives none.
    """

    formats: ClassVar[tuple[str, ...]]
    batch_tokens: ClassVar[int] = 8192

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        self.artifact = artifact
        self.options = options

    @abstractmethod
    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Return float32 logits of shape (rows, num_labels) for int64 (rows, seq) inputs."""

    @property
    def description(self) -> str:
        """A short human-readable name for summaries, e.g. ``onnx (onnx-int8, cpu)``."""
        return type(self).__name__
