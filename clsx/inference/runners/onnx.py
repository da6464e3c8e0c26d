"""ONNX Runtime backend for fp32 and int8 exports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from clsx.artifacts.artifact import ONNX_FILE, Artifact
from clsx.errors import ClsxError
from clsx.inference.hardware import physical_cores
from clsx.inference.runners.base import Runner, RunnerOptions

CUDA_PROVIDER = "CUDAExecutionProvider"


class OnnxRunner(Runner):
    """Runs ``model.onnx`` from a ``clsx export`` directory in an InferenceSession."""

    formats = ("onnx", "onnx-int8")

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        super().__init__(artifact, options)
        self.session = self.open_session(artifact.path / ONNX_FILE, options)
        outputs = self.session.get_outputs()
        width = outputs[0].shape[-1]
        if isinstance(width, int) and width != artifact.manifest.num_labels:
            raise ClsxError(
                f"{artifact.path / ONNX_FILE} outputs {width} logits but clsx.json lists "
                f"{artifact.manifest.num_labels} labels; re-export the model"
            )

    def open_session(self, path: Path, options: RunnerOptions) -> ort.InferenceSession:
        """The session that runs ``path``; subclasses put their own provider first."""
        return open_session(path, options)

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run(
            ["logits"], {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        return logits.astype(np.float32, copy=False)

    @property
    def precision(self) -> str:
        return "int8" if self.artifact.manifest.format == "onnx-int8" else "fp32"

    @property
    def description(self) -> str:
        device = "cuda" if CUDA_PROVIDER in self.session.get_providers() else "cpu"
        return f"onnx ({self.artifact.manifest.format}, {device})"


def open_session(path: Path, options: RunnerOptions, accelerators: Sequence[Any] = ()
                 ) -> ort.InferenceSession:
    """An InferenceSession on the requested device with one thread per physical core.

    ``accelerators`` are providers (names or ``(name, options)`` pairs) to put before CUDA.
    """
    available = ort.get_available_providers()
    if options.device == "cuda" and CUDA_PROVIDER not in available:
        raise ClsxError(
            "--device cuda was given but ONNX Runtime has no CUDA provider; "
            "install onnxruntime-gpu in place of onnxruntime"
        )
    use_cuda = options.device != "cpu" and CUDA_PROVIDER in available
    providers = [*accelerators, CUDA_PROVIDER] if use_cuda else []
    providers.append("CPUExecutionProvider")
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.threads or physical_cores()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), session_options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ClsxError(f"ONNX Runtime cannot load {path}: {exc}") from exc
