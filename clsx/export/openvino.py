"""``clsx export --format openvino``: the fp32 ONNX graph of an ``onnx`` export (unfused:
OpenVINO fuses for itself) converted to OpenVINO IR, and gated again as OpenVINO runs it.

The IR keeps fp32 weights (``compress_to_fp16=False``): fp16-compressed weights would move
the fp32 logits past the parity gate; bf16 is a run-time choice (``--dtype bf16``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clsx.artifacts.artifact import ONNX_FILE, OPENVINO_FILE
from clsx.errors import ClsxError
from clsx.export.common import open_export
from clsx.inference.encoding import EncodedWindow
from clsx.inference.runners import RunnerOptions
from clsx.inference.runners.openvino import import_openvino
from clsx.quality.parity import ParityReport, compare


def convert_gated(stage: Path, reference: np.ndarray, probe: EncodedWindow,
                  tolerance: float) -> ParityReport:
    """Replace the ONNX graph in ``stage`` (an export staged with its manifest) by its
    OpenVINO IR, and check that OpenVINO in fp32 reproduces the PyTorch ``reference`` logits
    of ``probe`` within ``tolerance``; raise where it does not."""
    openvino = import_openvino()
    model = openvino.convert_model(str(stage / ONNX_FILE))
    openvino.save_model(model, str(stage / OPENVINO_FILE), compress_to_fp16=False)
    for graph in stage.glob(f"{ONNX_FILE}*"):  # the graph and any external data
        graph.unlink()
    with open_export(stage, "openvino", RunnerOptions(device="cpu", dtype="fp32")) as runner:
        report = compare(reference, runner.predict_encoded(probe).logits, runner.rule)
    if report.max_abs_diff > tolerance:
        raise ClsxError(f"the OpenVINO graph differs from PyTorch by {report.max_abs_diff:.2e} "
                        f"(> {tolerance:.0e}) on the parity batch; not exporting")
    return report
