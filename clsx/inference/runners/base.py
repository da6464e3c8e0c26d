"""The interface every backend implements: logits for one already-tokenised batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from clsx.artifacts.artifact import Artifact
from clsx.inference.scheduler import pad

# Options that only some engines understand (today: vLLM's); see Runner.engine_options.
ENGINE_OPTIONS = ("dtype", "max_num_seqs", "max_num_batched_tokens", "memory_fraction")
DEVICES = ("auto", "cpu", "cuda")  # RunnerOptions.device
DTYPES = ("fp32", "bf16", "fp16")  # RunnerOptions.dtype: the compute dtypes a backend may take


@dataclass(frozen=True)
class RunnerOptions:
    """How a backend should use the hardware.

    ``device`` is ``cpu``, ``cuda`` or ``auto`` (CUDA when available); ``threads`` is the
    intra-op thread count, None for one per physical core; ``max_length`` the longest input
    (tokens) the pipeline will send, None for the manifest's. The engine options (None: the
    engine's default) are honoured by the backends that list them in ``engine_options``:
    ``dtype`` (``fp32`` or ``bf16``), ``max_num_seqs`` and ``max_num_batched_tokens`` (the
    engine's own scheduler limits) and ``memory_fraction`` (share of GPU memory the engine
    may take; on CPU, share of host RAM for its KV cache).
    """

    device: str = "auto"
    threads: int | None = None
    max_length: int | None = None
    dtype: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    memory_fraction: float | None = None


class Runner(ABC):
    """One backend. Scheduling, ordering, progress and writing live outside it.

    ``formats`` lists the artifact formats the backend can run; ``batch_tokens`` is the
    padded-token budget per batch that suits it when the user gives none;
    ``max_batch_rows`` caps the rows of one batch where the engine needs a bound (None: no
    cap); ``engine_options`` names the :class:`RunnerOptions` engine options it honours;
    ``recheck_backend`` the backend whose fp32 re-checks its rows below fp32 on the same
    directory (None: the same backend in fp32).

    The shared scheduler hands each batch to :meth:`predict_rows` as unpadded token-id
    lists. By default that pads them and calls :meth:`predict`, so a backend that runs
    padded tensors implements :meth:`predict` only. A backend with its own scheduler (vLLM)
    overrides :meth:`predict_rows` instead and sets ``batch_tokens`` so large that a whole
    window arrives in one call: one clsx scheduler (tokenise once, sort, restore order,
    prefetch) for every backend, and the engine packs its own batches from the window.
    """

    formats: ClassVar[tuple[str, ...]]
    batch_tokens: ClassVar[int] = 8192
    max_batch_rows: ClassVar[int | None] = None
    engine_options: ClassVar[tuple[str, ...]] = ()
    recheck_backend: ClassVar[str | None] = None

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        self.artifact = artifact
        self.options = options

    @abstractmethod
    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Return float32 logits of shape (rows, num_labels) for int64 (rows, seq) inputs."""

    def predict_rows(self, rows: list[list[int]]) -> np.ndarray:
        """Raw float32 logits (rows, num_labels) for one batch of unpadded token-id lists."""
        return self.predict(*pad(rows, self.artifact.manifest.padding_id))

    def close(self) -> None:
        """Release what the backend holds beyond memory (engine processes); default: nothing."""
        return None

    @property
    def precision(self) -> str:
        """The number format the model computes in: ``fp32``, ``bf16``, ``fp16`` or ``int8``."""
        return "fp32"

    @property
    def description(self) -> str:
        """A short human-readable name for summaries, e.g. ``onnx (onnx-int8, cpu)``."""
        return type(self).__name__
