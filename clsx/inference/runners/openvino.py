"""OpenVINO backend: clsx's ONNX exports as they are, or its OpenVINO IR exports (fp32, or
int8 quantized by nncf), compiled for the CPU in fp32 or, where the CPU computes them
natively, bf16 or fp16.

OpenVINO's CPU plugin would pick bf16 by itself on CPUs with AVX-512 BF16 or AMX; clsx always
states the precision (``--dtype``, fp32 by default), so that a run computes in what it says.
In an ``openvino-int8`` export the quantized MatMuls compute in int8 and ``--dtype`` is the
precision of every other op: by default bf16 where the CPU computes it natively (on the
trained MiniLM, AVX-512 BF16 EPYC, Parquet to Parquet with the re-check: 9% faster than fp32
on 512-token texts, 5-8% on short ones), else fp32. Its re-check runs the fp32 IR either way.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from clsx.artifacts.artifact import ONNX_FILE, OPENVINO_FILE, Artifact
from clsx.errors import ClsxError
from clsx.inference.hardware import physical_cores
from clsx.inference.runners.base import Runner, RunnerOptions

INSTALL_HINT = "install it with `pip install 'clsx[openvino]'`"
# clsx dtype -> OpenVINO's inference precision, and the capability the CPU plugin must list
# (OPTIMIZATION_CAPABILITIES) to run it natively.
PRECISIONS = {"fp32": ("f32", "FP32"), "bf16": ("bf16", "BF16"), "fp16": ("f16", "FP16")}


def import_openvino_extra(package: str, needed_by: str) -> Any:
    """Import ``package`` of the ``openvino`` extra, or fail in one line: ``needed_by`` (what
    needs it), and the command that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ClsxError(f"{needed_by}, which is not installed; {INSTALL_HINT}") from exc


def import_openvino() -> Any:
    """Import openvino, or fail in one line with the command that installs it."""
    return import_openvino_extra("openvino", "the openvino backend needs OpenVINO")


class OpenvinoRunner(Runner):
    """Runs ``model.xml`` (an ``openvino`` or ``openvino-int8`` export) or ``model.onnx`` (an
    ``onnx`` export) with one synchronous infer request on the CPU, one thread per physical
    core."""

    formats = ("openvino", "openvino-int8", "onnx")
    engine_options = ("dtype",)
    # Measured on the trained MiniLM (AVX-512 BF16 EPYC, bf16): 4,096 padded tokens per batch
    # ran 3,000 short texts 5-8% faster than 8,192, and 512-token texts as fast.
    batch_tokens = 4096

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        super().__init__(artifact, options)
        if options.device == "cuda":
            raise ClsxError("the openvino backend runs on the CPU; drop --device cuda or use "
                            "another backend")
        openvino = import_openvino()
        core = openvino.Core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        int8 = artifact.manifest.format == "openvino-int8"
        self.dtype = options.dtype or ("bf16" if int8 and "BF16" in capabilities else "fp32")
        hint, capability = PRECISIONS[self.dtype]
        if capability not in capabilities:
            raise ClsxError(f"--dtype {self.dtype}: this CPU does not compute {self.dtype} "
                            "natively for OpenVINO; use --dtype fp32")
        path = graph_path(artifact)
        try:
            model = core.read_model(str(path))
            compiled = core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": hint,
                "INFERENCE_NUM_THREADS": options.threads or physical_cores(),
                "PERFORMANCE_HINT": "LATENCY",  # one stream: the batches come one at a time
            })
        except RuntimeError as exc:  # OpenVINO raises RuntimeError for unreadable graphs
            raise ClsxError(f"OpenVINO cannot load {path}: {str(exc).splitlines()[0]}") from exc
        width = compiled.output(0).get_partial_shape()[-1]
        if width.is_static and width.get_length() != artifact.manifest.num_labels:
            raise ClsxError(f"{path} outputs {width.get_length()} logits but clsx.json lists "
                            f"{artifact.manifest.num_labels} labels; re-export the model")
        self.request = compiled.create_infer_request()

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.request.infer({"input_ids": input_ids, "attention_mask": attention_mask})
        # The request reuses its output buffer: copy out before the next batch.
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)

    @property
    def precision(self) -> str:
        return "int8" if self.artifact.manifest.format == "openvino-int8" else self.dtype

    @property
    def description(self) -> str:
        computes = (f"int8, {self.dtype} elsewhere" if self.precision == "int8"
                    else self.dtype)
        return f"openvino ({computes}, {self.artifact.manifest.format}, cpu)"


def graph_path(artifact: Artifact) -> Path:
    """The graph OpenVINO reads from ``artifact``: its IR, or its ONNX graph."""
    return artifact.path / (ONNX_FILE if artifact.manifest.format == "onnx"
                            else OPENVINO_FILE)
