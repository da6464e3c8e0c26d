"""ONNX Runtime's transformer fusions on an exported graph (onnxscript's ``optimize_for_ort``).

The dynamo exporter writes attention as MatMul/Softmax with a NaN guard (``IsNaN``/``Where``)
and layer norms, GELUs and rotary embeddings as chains of small ops. The rewriter replaces
them with ONNX Runtime's fused contrib ops (``Attention``/``MultiHeadAttention``,
``SkipLayerNormalization``, ``SkipSimplifiedLayerNormalization``, ``BiasGelu``, ...), which
ONNX Runtime's CPU and CUDA providers run; TensorRT does not, so ``tensorrt`` exports stay
unfused. With padding-only masks no query row is fully masked, so dropping the NaN guard
changes no value; the export's fp32 parity gate checks the fused graph all the same.

int8 exports stop at ``MultiHeadAttention`` (:data:`INT8`): the last step packs a BERT
layer's Q, K and V projections into one ``Attention`` op, which ONNX Runtime's quantizer
leaves in fp32 (its ``QAttention`` has no attention-bias input), so the three MatMuls would
lose int8.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from unittest import mock

# The fusion sets: every fusion (fp32 graphs), and every one but the packed-QKV Attention
# (graphs to quantize).
FULL, INT8 = "full", "int8"


def _no_packed_attention(model, debug: bool = False) -> int:
    """Stand-in for onnxscript's ``fuse_attention`` step: applies nothing."""
    return 0


def fuse_for_ort(graph: Path, output: Path, fusion_set: str = FULL) -> dict[str, int]:
    """Write ``graph`` with ONNX Runtime's fusions applied to ``output`` (weights kept in an
    external ``output.data`` file where ``graph`` keeps them outside; ``output`` lies in
    another directory than ``graph``, whose weights are read lazily); return the count of
    each fusion that applied (those that did not are left out). On an error ``output`` may
    be half written: it lies in an export's staging directory. ``fusion_set`` is
    :data:`FULL` or :data:`INT8` (all but the packed-QKV ``Attention``)."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import _core, optimize_for_ort

    external = graph.with_name(graph.name + ".data").exists()
    rewriter_log = logging.getLogger("onnxscript")
    level = rewriter_log.level
    rewriter_log.setLevel(logging.ERROR)
    skipped = (mock.patch.object(_core, "fuse_attention", _no_packed_attention)
               if fusion_set == INT8 else contextlib.nullcontext())
    try:
        with contextlib.redirect_stdout(io.StringIO()), skipped:
            model, counts = optimize_for_ort(ir.load(graph))
        ir.save(model, output, external_data=output.name + ".data" if external else None)
    finally:
        rewriter_log.setLevel(level)
    return {name: count for name, count in sorted(counts.items()) if count}
