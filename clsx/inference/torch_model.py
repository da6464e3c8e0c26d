"""The PyTorch reference model: loading a classifier and calling it for logits only."""

from __future__ import annotations

from typing import Any

import torch

from clsx.artifacts.artifact import Artifact
from clsx.environment import quiet_loading

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class LogitsOnly(torch.nn.Module):
    """Wraps a ``*ForSequenceClassification`` so that its forward returns the logits alone.

    Decoder classifiers are called with ``use_cache=False``: a returned KV cache is useless
    for classification and breaks ``torch.onnx.export`` under transformers 5.
    """

    def __init__(self, model: torch.nn.Module, is_decoder: bool) -> None:
        super().__init__()
        self.model = model
        self.extra = {"use_cache": False} if is_decoder else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **self.extra).logits


def load_classifier(
    artifact: Artifact, dtype: str = "fp32", device: str = "cpu"
) -> LogitsOnly:
    """Load a torch artifact as an eval-mode :class:`LogitsOnly` module on ``device``."""
    from transformers import AutoModelForSequenceClassification

    manifest = artifact.manifest
    with quiet_loading():
        model: Any = AutoModelForSequenceClassification.from_pretrained(
            artifact.path, dtype=DTYPES[dtype],
            use_safetensors=None if artifact.allow_pickle else True, trust_remote_code=False,
        )
    # The manifest is authoritative for padding: the pooled token is found by comparing
    # input_ids with this id, in torch and in every export.
    model.config.pad_token_id = manifest.pad_token_id
    return LogitsOnly(model, manifest.is_decoder).eval().to(device)
