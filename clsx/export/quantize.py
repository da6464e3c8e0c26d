"""int8 for ``clsx export --format onnx-int8``: ONNX Runtime's dynamic quantization of an
fp32 graph, gated on agreement with fp32 on the labels users get.

Weights are per-channel int8 in a 7-bit range (``reduce_range``) and activations are
quantized per batch, for every MatMul with a constant weight. On x86 CPUs without VNNI
(AVX2 only), ONNX Runtime multiplies u8 activations by s8 weights with ``VPMADDUBSW``, which
saturates sums of two products in int16; 7-bit weights cannot saturate, so every x86 CPU
computes the labels the gate measured, at full u8s8 speed. benchmarks/int8_options.py
measured the alternatives on four trained heads (AMD EPYC with AVX-512 VNNI): 8-bit weights
agree within 0.8 points either way at the same speed (and would need ONNX Runtime's
``session.x64quantprecision``, its slower u8u8 kernels, on AVX2 CPUs); u8u8 weights and that
option run at 0.66x; static QDQ (MinMax, Percentile, Entropy, s8s8, SmoothQuant) loses 2 to
17 points of agreement without being faster.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import numpy as np

from clsx.artifacts.artifact import ONNX_FILE
from clsx.errors import ClsxError
from clsx.export.common import open_export
from clsx.inference.classifier import Classifier
from clsx.inference.encoding import EncodedWindow
from clsx.inference.runners import RunnerOptions
from clsx.quality.parity import ParityReport, compare
from clsx.quality.recheck import RecheckCut, choose_cut

CPU = RunnerOptions(device="cpu")
# Module paths (from the exporter's name scopes) of the MatMuls whose int8 error flips labels
# most: the feed-forward output projections, whose inputs carry the largest activation
# outliers, and the classification head.
SENSITIVE_MODULES = re.compile(r"(mlp\.down_proj|layer\.\d+\.output\.dense|score|classifier)$")


def quantize_gated(
    fp32: Classifier,
    fp32_probe: np.ndarray,
    stage: Path,
    probe: EncodedWindow,
    calibration_texts: list[str] | None,
    min_agreement: float,
) -> tuple[dict[str, ParityReport], list[str], RecheckCut | None]:
    """int8 of ``fp32``'s graph into ``stage``, and its label agreement with fp32
    (``fp32_probe``: its logits on ``probe``); notes on what was kept fp32; and, on
    calibration texts, the cut a run of it re-checks at (:mod:`clsx.quality.recheck`).

    The gate is on ``calibration_texts`` when given, else on the parity batch. When
    quantizing every weight MatMul misses ``min_agreement``, the feed-forward output
    projections and the head stay fp32 (7-bit weights on a SmolLM2 TREC classifier: 94.0% ->
    99.4% agreement).
    """
    gated = "int8_calibration" if calibration_texts else "int8_parity_batch"
    fp32_path = fp32.artifact.path / ONNX_FILE
    expected = {"int8_parity_batch": fp32_probe}
    if calibration_texts:  # computed once, compared with every int8 plan
        expected["int8_calibration"] = fp32.predict_all(calibration_texts).logits
    reports: dict[str, ParityReport] = {}
    notes: list[str] = []
    kept = sensitive_matmuls(fp32_path)
    for plan in ([], kept) if kept else ([],):
        quantize_int8(fp32_path, stage / ONNX_FILE, plan)
        with open_export(stage, "onnx", CPU) as int8:
            measured, calibrated = _int8_parity(fp32, int8, expected, probe, calibration_texts)
        agreement = measured[gated].label_agreement
        if agreement is None or agreement >= min_agreement:
            reports.update(measured)
            cut = None if calibrated is None else choose_cut(
                fp32.rule, calibrated, expected["int8_calibration"])
            if plan:
                notes.append(f"int8: {len(plan)} feed-forward output and head MatMuls kept in "
                             f"fp32 (every MatMul in int8 agreed on only "
                             f"{reports[f'{gated}_all_matmuls'].label_agreement:.2%})")
            return reports, notes, cut
        reports[f"{gated}_all_matmuls"] = measured[gated]
    kept_too = " even with the feed-forward outputs and head in fp32" if kept else ""
    raise int8_refusal(measured[gated], gated, min_agreement, kept_too)


def int8_refusal(report: ParityReport, gated: str, min_agreement: float, kept_too: str = ""
                 ) -> ClsxError:
    """The error of an int8 export whose labels (``report`` on the ``gated`` rows) agree
    with fp32's on less than ``min_agreement``."""
    return ClsxError(
        f"int8 labels agree with fp32 on {report.label_agreement:.2%} of the {report.rows} "
        f"{gated.removeprefix('int8_').replace('_', ' ')} rows{kept_too} "
        f"(< {min_agreement:.2%}); keep the fp32 export or lower --min-agreement"
    )


def sensitive_matmuls(fp32_path: Path) -> list[str]:
    """Names of the MatMul nodes of SENSITIVE_MODULES ([] if the graph lacks name scopes)."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    names = []
    for node in graph.node:
        scopes = next((p.value for p in node.metadata_props
                       if p.key == "pkg.torch.onnx.name_scopes"), None)
        if node.op_type == "MatMul" and scopes:
            module = ast.literal_eval(scopes)[-2:-1]
            if module and SENSITIVE_MODULES.search(module[0]):
                names.append(node.name)
    return names


def quantize_int8(fp32_path: Path, int8_path: Path, fp32_nodes: list[str]) -> None:
    """ONNX Runtime's dynamic int8 of every MatMul with a constant weight but ``fp32_nodes``:
    per-channel 7-bit weights, activations quantized per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs an unactionable pre-processing hint
    try:
        quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True, op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=fp32_nodes)
    finally:
        root.setLevel(level)


def _int8_parity(fp32: Classifier, int8: Classifier, expected: dict[str, np.ndarray],
                 probe: EncodedWindow, calibration_texts: list[str] | None
                 ) -> tuple[dict[str, ParityReport], np.ndarray | None]:
    """int8 against fp32 on the parity batch and, when given, on the calibration texts, both
    through the classifier users run (encoder, long-text setting, thresholds); and int8's
    logits on the calibration texts (None: none given)."""
    reports = {"int8_parity_batch": compare(expected["int8_parity_batch"],
                                            int8.predict_encoded(probe).logits, fp32.rule)}
    calibrated = None
    if calibration_texts:
        calibrated = int8.predict_all(calibration_texts).logits
        reports["int8_calibration"] = compare(expected["int8_calibration"], calibrated,
                                              fp32.rule)
    return reports, calibrated
