"""TensorRT on NVIDIA GPUs, through ONNX Runtime's TensorRT execution provider.

A ``clsx export --format tensorrt`` directory holds the same fp32 ONNX graph as an ``onnx``
export. On first use, the provider builds a TensorRT engine from it (minutes) in fp16 unless
``--dtype fp32`` is given, and caches it, so later runs start in seconds. The engine has one
optimisation profile that covers every batch the scheduler can send, 1..``max_batch_rows``
rows of 1..max_length tokens. Without a profile, the provider rebuilds the engine whenever
a batch shape falls outside the shapes it has seen. Nodes that TensorRT cannot run fall back
to CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnxruntime as ort

from clsx.artifacts.artifact import Artifact
from clsx.artifacts.bundled import cache_dir
from clsx.errors import ClsxError
from clsx.inference.runners.base import RunnerOptions
from clsx.inference.runners.onnx import OnnxRunner, open_session

TENSORRT_PROVIDER = "TensorrtExecutionProvider"
TENSORRT_DTYPES = ("fp16", "fp32")
ENGINE_CACHE = "tensorrt-cache"
INPUTS = ("input_ids", "attention_mask")


class TensorrtRunner(OnnxRunner):
    """Runs a ``tensorrt`` export on the GPU; refuses to start without TensorRT."""

    formats = ("tensorrt",)
    batch_tokens = 32768
    max_batch_rows = 256
    engine_options = ("dtype",)

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        self.dtype = options.dtype or "fp16"
        if self.dtype not in TENSORRT_DTYPES:
            raise ClsxError(f"--dtype {self.dtype} is not offered for tensorrt; use "
                            f"{' or '.join(TENSORRT_DTYPES)}")
        super().__init__(artifact, options)

    def open_session(self, path: Path, options: RunnerOptions) -> ort.InferenceSession:
        require_tensorrt(f"{self.artifact.path} is a tensorrt export, which", options.device)
        max_length = options.max_length or self.artifact.manifest.max_length
        provider = tensorrt_options(engine_cache(self.artifact), max_length,
                                    self.max_batch_rows, self.batch_tokens, self.dtype)
        return open_session(path, options, accelerators=[(TENSORRT_PROVIDER, provider)])

    @property
    def precision(self) -> str:
        return self.dtype

    @property
    def description(self) -> str:
        return f"tensorrt ({self.dtype}, cuda)"


def tensorrt_available() -> bool:
    """Whether this ONNX Runtime can run TensorRT (onnxruntime-gpu with TensorRT libraries)."""
    return TENSORRT_PROVIDER in ort.get_available_providers()


def require_tensorrt(subject: str, device: str | None) -> None:
    """Stop with a clear error where TensorRT cannot run: on ``--device cpu`` or without it.

    ``subject`` starts the sentence, e.g. "--backends tensorrt".
    """
    if device == "cpu" or not tensorrt_available():
        raise ClsxError(f"{subject} runs on an NVIDIA GPU with onnxruntime-gpu and TensorRT "
                        "installed (pip install 'clsx[gpu]' tensorrt); here, use the onnx "
                        "format instead")


def tensorrt_options(cache: Path, max_length: int, max_rows: int, batch_tokens: int,
                     dtype: str) -> dict[str, Any]:
    """Provider options: precision, engine and timing caches in ``cache``, and one profile
    from a 1-token row up to ``max_rows`` rows of ``max_length`` tokens, tuned for full
    batches of ``batch_tokens`` tokens of rows at half the length."""
    typical_length = max(1, max_length // 2)
    typical_rows = max(1, min(max_rows, batch_tokens // typical_length))

    def shapes(rows: int, length: int) -> str:
        return ",".join(f"{name}:{rows}x{length}" for name in INPUTS)

    return {
        "trt_fp16_enable": dtype == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(typical_rows, typical_length),
        "trt_profile_max_shapes": shapes(max_rows, max_length),
    }


def engine_cache(artifact: Artifact) -> Path:
    """The export's own cache folder where it can be written, else one in the clsx cache."""
    local = artifact.path / ENGINE_CACHE
    if os.access(local if local.is_dir() else artifact.path, os.W_OK):
        local.mkdir(exist_ok=True)
        return local
    shared = cache_dir() / "tensorrt" / artifact.fingerprint
    shared.mkdir(parents=True, exist_ok=True)
    return shared
