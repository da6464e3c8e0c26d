"""ONNX Runtime's transformer fusions on an exported graph (onnxscript's ``optimize_for_ort``).

The dynamo exporter writes attention as MatMul/Softmax with a NaN guard (``IsNaN``/``Where``)
and layer norms, GELUs and rotary embeddings as chains of small ops. The rewriter replaces
them with ONNX Runtime's fused contrib ops (``Attention``/``MultiHeadAttention``,
``SkipLayerNormalization``, ``SkipSimplifiedLayerNormalization``, ``BiasGelu``, ...), which
ONNX Runtime's CPU and CUDA providers run; TensorRT does not, so ``tensorrt`` exports stay
unfused. With padding-only masks no query row is fully masked, so dropping the NaN guard
changes no value; the export's fp32 parity gate checks the fused graph all the same.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path


def fuse_for_ort(graph: Path, output: Path) -> dict[str, int]:
    """Write ``graph`` with ONNX Runtime's fusions applied to ``output`` (weights kept in an
    external ``output.data`` file where ``graph`` keeps them outside; ``output`` lies in
    another directory than ``graph``, whose weights are read lazily); return the count of
    each fusion that applied (those that did not are left out). On an error ``output`` may
    be half written: it lies in an export's staging directory."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    external = graph.with_name(graph.name + ".data").exists()
    rewriter_log = logging.getLogger("onnxscript")
    level = rewriter_log.level
    rewriter_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model, counts = optimize_for_ort(ir.load(graph))
        ir.save(model, output, external_data=output.name + ".data" if external else None)
    finally:
        rewriter_log.setLevel(level)
    return {name: count for name, count in sorted(counts.items()) if count}
