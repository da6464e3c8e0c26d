"""PyTorch backend: the fp32 reference every other backend is measured against."""

from __future__ import annotations

import numpy as np
import torch

from clsx.artifact import Artifact
from clsx.errors import ClsxError
from clsx.modeling import load_classifier
from clsx.runners import physical_cores
from clsx.runners.base import Runner, RunnerOptions


class TorchRunner(Runner):
    """Runs a merged Hugging Face checkpoint with ``AutoModelForSequenceClassification``."""

    formats = ("torch",)

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        super().__init__(artifact, options)
        self.device = _resolve_device(options.device)
        if self.device == "cpu":
            torch.set_num_threads(options.threads or physical_cores())
        self.model = load_classifier(artifact, "fp32", self.device)

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(
                torch.from_numpy(input_ids).to(self.device),
                torch.from_numpy(attention_mask).to(self.device),
            )
        return logits.float().cpu().numpy()

    @property
    def description(self) -> str:
        return f"torch (fp32, {self.device})"


def _resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ClsxError("--device cuda was given but torch sees no CUDA device")
    return requested
