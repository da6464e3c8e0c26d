"""``clsx export --format onnx`` of a static student: its mean-of-vectors and head as a
small ONNX graph (Gather, ReduceSum and a normalisation over the row and over its
openings, two MatMuls), which the onnx backend runs.

The graph takes the inputs every clsx ONNX graph takes (``input_ids``, ``attention_mask``)
and gives ``logits``; it computes what :class:`~clsx.inference.runners.static.StaticModel`
computes, and the export is gated on that (logits within the fp32 tolerance of the numpy
runner on a mixed-length batch, every label equal).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clsx.artifacts.artifact import ONNX_FILE, Artifact, open_artifact
from clsx.errors import ClsxError
from clsx.export.common import (
    ExportResult,
    export_manifest,
    open_export,
    write_tokenizer_and_config,
)
from clsx.export.config import FP32_TOLERANCE
from clsx.inference.classifier import Classifier
from clsx.inference.runners import RunnerOptions
from clsx.inference.runners.static import StaticModel
from clsx.io.staging import staged_directory
from clsx.quality.parity import compare, parity_inputs

OPSET = 17
PROBE_LENGTH = 512  # the parity batch's longest row (the manifest allows 4,096 tokens)


def static_graph(model: StaticModel):
    """The ONNX model of ``model``: the sum of the (unpadded) tokens' vectors, L2-normalised
    as :func:`~clsx.inference.runners.static.pooled` does, the same over each opening
    (the first ``k + 1`` positions: [CLS] and ``k`` tokens), concatenated and scaled as
    :func:`~clsx.inference.runners.static.features` does, then the head (hidden ReLU
    layer, output layer)."""
    from onnx import TensorProto, helper, numpy_helper

    def constant(name: str, value: np.ndarray):
        return numpy_helper.from_array(np.ascontiguousarray(value), name)

    node = helper.make_node
    pools = 1 + len(model.openings)
    initializers = [
        constant("vectors", model.vectors),
        constant("hidden_t", np.ascontiguousarray(model.head.hidden_weight.T)),
        constant("hidden_bias", model.head.hidden_bias),
        constant("head_t", np.ascontiguousarray(model.head.weight.T)),
        constant("bias", model.head.bias),
        constant("axis1", np.array([1], np.int64)),
        constant("tiny", np.array(1e-12, np.float32)),
        constant("last", np.array([-1], np.int64)),
        constant("start", np.array([0], np.int64)),
        constant("unit", np.array(1 / np.sqrt(pools), np.float32)),
        *(constant(f"end{k}", np.array([k + 1], np.int64)) for k in model.openings),
    ]
    nodes = [
        node("Gather", ["vectors", "input_ids"], ["gathered"]),           # B x S x D
        node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),   # padding: 0
        node("Unsqueeze", ["mask", "last"], ["mask3"]),
        node("Mul", ["gathered", "mask3"], ["unpadded"]),
        *_normalised_sum("unpadded", "whole", node),
    ]
    for k in model.openings:  # the first k + 1 positions of every row
        nodes += [node("Slice", ["unpadded", "start", f"end{k}", "axis1"], [f"opening{k}"]),
                  *_normalised_sum(f"opening{k}", f"whole{k}", node)]
    if model.openings:
        parts = ["whole", *(f"whole{k}" for k in model.openings)]
        nodes += [node("Concat", parts, ["joined"], axis=1),
                  node("Mul", ["joined", "unit"], ["features"])]
    else:
        nodes.append(node("Identity", ["whole"], ["features"]))
    nodes += [
        node("MatMul", ["features", "hidden_t"], ["hidden_scores"]),
        node("Add", ["hidden_scores", "hidden_bias"], ["hidden_in"]),
        node("Relu", ["hidden_in"], ["hidden"]),
        node("MatMul", ["hidden", "head_t"], ["scores"]),
        node("Add", ["scores", "bias"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
              for name in ("input_ids", "attention_mask")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch", model.head.weight.shape[0]])]
    graph = helper.make_graph(nodes, "clsx_static", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _normalised_sum(vectors: str, output: str, node) -> list:
    """Nodes summing ``vectors`` (B x S x D) over the sequence and L2-normalising the sum
    into ``output`` (B x D)."""
    return [
        node("ReduceSum", [vectors, "axis1"], [f"{output}_sums"], keepdims=0),
        node("Mul", [f"{output}_sums", f"{output}_sums"], [f"{output}_squares"]),
        node("ReduceSum", [f"{output}_squares", "axis1"], [f"{output}_square_norm"],
             keepdims=1),
        node("Sqrt", [f"{output}_square_norm"], [f"{output}_norm"]),
        node("Max", [f"{output}_norm", "tiny"], [f"{output}_safe_norm"]),
        node("Div", [f"{output}_sums", f"{output}_safe_norm"], [output]),
    ]


def export_static_onnx(model_dir: Path, output: Path, tolerance: float = FP32_TOLERANCE,
                       overwrite: bool = False) -> ExportResult:
    """Write ``model_dir`` (a static student) as an ONNX export at ``output``, gated on
    parity with the static runner; nothing is left at ``output`` on failure."""
    import onnx

    artifact: Artifact = open_artifact(model_dir)
    probe = parity_inputs(artifact.manifest.replace(max_length=PROBE_LENGTH),
                          artifact.tokenizer, rows=32)
    options = RunnerOptions(device="cpu")
    with Classifier.from_artifact(artifact, "static", options) as static:
        reference = static.predict_encoded(probe).logits
        rule = static.rule
    with staged_directory(output, overwrite) as stage:
        onnx.save(static_graph(StaticModel.load(artifact.path)), str(stage / ONNX_FILE))
        write_tokenizer_and_config(artifact, stage)
        export_manifest(artifact, output, "onnx", {}).save(stage)  # to be opened: gated next
        with open_export(stage, "onnx", options) as graph:
            report = compare(reference, graph.predict_encoded(probe).logits, rule)
        if report.max_abs_diff > tolerance or report.label_agreement != 1.0:
            raise ClsxError(f"the ONNX graph of {model_dir} misses the static runner's logits "
                            f"(max |diff| {report.max_abs_diff:.2e} > {tolerance:g}, labels "
                            f"{report.label_agreement:.2%} equal); nothing was written")
        manifest = export_manifest(artifact, output, "onnx", {"fp32": report})
        manifest.save(stage)
    return ExportResult(output, manifest, {"fp32": report})
