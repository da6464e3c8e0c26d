"""``clsx export --format openvino``: the PyTorch model converted to OpenVINO IR by
``openvino.convert_model``, gated on parity with PyTorch fp32 as OpenVINO runs it.

From PyTorch rather than through clsx's ONNX graph: OpenVINO ran the converted PyTorch graph
as fast as optimum-intel's IR, 5% faster than either ONNX graph on short texts and 10%
faster than the unfused one on 512-token texts (``benchmarks/openvino_peer.py``), and the
conversion takes seconds where the ONNX exporter takes tens. The IR keeps fp32 weights
(``compress_to_fp16=False``: fp16-compressed weights would move the fp32 logits past the
gate); bf16 is a run-time choice (``--dtype bf16``).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from clsx.artifacts.artifact import OPENVINO_FILE, Artifact
from clsx.errors import ClsxError
from clsx.export.common import (
    ExportResult,
    export_manifest,
    open_export,
    open_torch_artifact,
    write_tokenizer_and_config,
)
from clsx.export.config import FP32_TOLERANCE
from clsx.inference.classifier import Classifier
from clsx.inference.encoding import EncodedWindow
from clsx.inference.runners import RunnerOptions
from clsx.inference.runners.openvino import import_openvino
from clsx.inference.scheduler import pad
from clsx.inference.torch_model import LogitsOnly
from clsx.io.staging import staged_directory
from clsx.quality.parity import compare, parity_inputs

CPU_FP32 = RunnerOptions(device="cpu", dtype="fp32")


def export_openvino(model_dir: Path | Artifact, output: Path, *,
                    tolerance: float = FP32_TOLERANCE, overwrite: bool = False,
                    allow_pickle: bool = False) -> ExportResult:
    """Convert a torch artifact (its directory, or the :class:`Artifact` already opened) to
    OpenVINO IR at ``output``; OpenVINO in fp32 must reproduce the PyTorch logits within
    ``tolerance`` on a mixed-length batch, run as users run it. Nothing is left at
    ``output`` on failure."""
    openvino = import_openvino()
    artifact = open_torch_artifact(model_dir, allow_pickle)
    probe = parity_inputs(artifact.manifest, artifact.tokenizer, rows=32)
    with Classifier.from_artifact(artifact, "torch", CPU_FP32) as torch_model, \
            staged_directory(output, overwrite) as stage:
        reference = torch_model.predict_encoded(probe).logits
        _convert(openvino, torch_model.runner.model, probe, artifact.manifest.padding_id,
                 stage / OPENVINO_FILE)
        write_tokenizer_and_config(artifact, stage)
        export_manifest(artifact, output, "openvino", {}).save(stage)
        with open_export(stage, "openvino", CPU_FP32) as exported:
            report = compare(reference, exported.predict_encoded(probe).logits, exported.rule)
        if report.max_abs_diff > tolerance:
            raise ClsxError(f"the OpenVINO graph differs from PyTorch by "
                            f"{report.max_abs_diff:.2e} (> {tolerance:.0e}) on the parity "
                            "batch; not exporting")
        manifest = export_manifest(artifact, output, "openvino", {"fp32": report})
        manifest.save(stage)
    return ExportResult(output=output, manifest=manifest, parity={"fp32": report})


def _convert(openvino: Any, module: LogitsOnly, probe: EncodedWindow, padding_id: int,
             path: Path) -> None:
    """Trace ``module`` on two rows of ``probe`` with dynamic batch and sequence axes and
    save the IR at ``path``. The tracer's warnings (Python booleans of shapes, fixed at
    trace time) are silenced: the gate checks the graph on every length it meets."""
    sample = tuple(torch.from_numpy(array) for array in pad(probe.ids[:2], padding_id))
    dynamic = [-1, -1]
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            model = openvino.convert_model(module, example_input=sample, input=[
                ("input_ids", dynamic, openvino.Type.i64),
                ("attention_mask", dynamic, openvino.Type.i64)])
        except Exception as exc:  # the converter raises many internal error types
            raise ClsxError(f"OpenVINO cannot convert the model: "
                            f"{str(exc).splitlines()[0]}") from exc
    openvino.save_model(model, str(path), compress_to_fp16=False)
