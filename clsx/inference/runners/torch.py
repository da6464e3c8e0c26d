"""PyTorch backend: the fp32 reference every other backend is measured against, and its
lower-precision variants (``--dtype bf16``: AMX / AVX-512 BF16 on CPU; bf16 or fp16 on GPU)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from clsx.artifacts.artifact import Artifact
from clsx.errors import ClsxError
from clsx.inference.hardware import physical_cores
from clsx.inference.runners.base import Runner, RunnerOptions
from clsx.inference.torch_model import load_classifier


class TorchRunner(Runner):
    """Runs a merged Hugging Face checkpoint with ``AutoModelForSequenceClassification``."""

    formats = ("torch",)
    engine_options = ("dtype",)

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        super().__init__(artifact, options)
        self.device = resolve_device(options.device)
        self.dtype = options.dtype or "fp32"
        if self.dtype == "fp16" and self.device == "cpu":
            raise ClsxError("--dtype fp16 needs a GPU (--device cuda); on CPU use bf16")
        self.threads = (options.threads or physical_cores()) if self.device == "cpu" else None
        self.model = load_classifier(artifact, self.dtype, self.device)

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), compute_threads(self.threads):
            logits = self.model(
                torch.from_numpy(input_ids).to(self.device),
                torch.from_numpy(attention_mask).to(self.device),
            )
        return logits.float().cpu().numpy()

    @property
    def precision(self) -> str:
        return self.dtype

    @property
    def description(self) -> str:
        return f"torch ({self.dtype}, {self.device})"


@contextmanager
def compute_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` (None: left alone) for the block, and
    the caller's restored after it: ``torch.set_num_threads`` is process-wide, and clsx
    used as a library must not change its caller's process."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; refuses an absent ``cuda``."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ClsxError("--device cuda was given but torch sees no CUDA device")
    return requested
