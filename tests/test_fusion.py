"""ONNX Runtime fusions on exported graphs: recorded, gated on parity like the unfused graph,
and replaced by the unfused graph when they fail."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from clsx.artifacts.artifact import open_artifact
from clsx.cli import main
from clsx.export.onnx import FP32_TOLERANCE, export_onnx
from clsx.testing.tiny_models import FAMILIES

# The fused contrib op each family's attention must become (encoders: packed QKV Attention;
# decoders with rotary embeddings and grouped heads: MultiHeadAttention).
FUSED_ATTENTION = {"bert": "Attention", "qwen2": "MultiHeadAttention",
                   "llama": "MultiHeadAttention"}


def op_types(export) -> set[str]:
    return {node.op_type for node in onnx.load(str(export / "model.onnx")).graph.node}


@pytest.mark.parametrize("family", FAMILIES)
def test_exports_carry_fused_attention_within_the_fp32_gate(family, tiny_exports):
    manifest = open_artifact(tiny_exports[family]).manifest
    assert manifest.fusions and all(count > 0 for count in manifest.fusions.values())
    ops = op_types(tiny_exports[family])
    assert FUSED_ATTENTION[family] in ops
    assert "IsNaN" not in ops  # the exporter's NaN guard went with the unfused attention
    assert manifest.parity["fp32"]["max_abs_diff"] <= FP32_TOLERANCE


def test_no_fusion_keeps_the_exporters_graph(tiny_models, tmp_path):
    out = tmp_path / "plain"
    result = CliRunner().invoke(main, ["export", str(tiny_models["bert"]), "-o", str(out),
                                       "--no-fusion"])
    assert result.exit_code == 0, result.output
    assert "fusions" not in result.output
    assert open_artifact(out).manifest.fusions is None
    assert "Attention" not in op_types(out) and "MatMul" in op_types(out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == []


def test_no_fusion_is_refused_where_nothing_is_fused(tiny_models, tmp_path):
    result = CliRunner().invoke(main, ["export", str(tiny_models["bert"]), "-o",
                                       str(tmp_path / "v"), "--format", "vllm", "--no-fusion"])
    assert result.exit_code == 1
    assert "--no-fusion applies to --format onnx and onnx-int8 only" in result.output


def shifted_logits(graph, output, fusion_set) -> dict[str, int]:
    """A stand-in for the fusion pass whose graph adds 1 to every logit."""
    model = onnx.load(str(graph))
    logits = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{name}_raw" if name == logits else name for name in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        np.ones((), dtype="float32"), "one"))
    model.graph.node.append(onnx.helper.make_node("Add", [f"{logits}_raw", "one"], [logits]))
    onnx.save(model, str(output))
    return {"shift": 1}


def failing_fusion(graph, output, fusion_set) -> dict[str, int]:
    raise RuntimeError("pattern matcher broke\nsecond line")


@pytest.mark.parametrize("fusion, note", [
    (shifted_logits, "ONNX Runtime's fusions moved the logits by 1.00e+00"),
    (failing_fusion, "ONNX Runtime fusions failed (pattern matcher broke)"),
])
@pytest.mark.parametrize("fmt", ["onnx", "onnx-int8"])
def test_a_fusion_that_fails_leaves_the_unfused_graph(fusion, note, fmt, tiny_models,
                                                      tmp_path, monkeypatch):
    monkeypatch.setattr("clsx.export.onnx.fuse_for_ort", fusion)
    result = export_onnx(tiny_models["bert"], tmp_path / "out", fmt=fmt, min_agreement=0.0)
    assert any(n.startswith(note) for n in result.notes), result.notes
    assert result.manifest.fusions is None
    assert result.parity["fp32"].max_abs_diff <= FP32_TOLERANCE
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_int8_exports_stop_at_multi_head_attention(tiny_models, tmp_path):
    # The full set packs BERT's Q/K/V into Attention, which the quantizer leaves fp32; the int8
    # set keeps them as MatMuls under MultiHeadAttention: Q, K, V, output and both
    # feed-forward projections of every layer are int8.
    result = export_onnx(tiny_models["bert"], tmp_path / "int8", fmt="onnx-int8",
                         min_agreement=0.0)
    fusions = result.manifest.fusions
    assert "attention" not in fusions and fusions["mha2"] > 0
    assert fusions == open_artifact(tmp_path / "int8").manifest.fusions
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node]
    assert "Attention" not in ops and "MultiHeadAttention" in ops
    layers = json.loads((tiny_models["bert"] / "config.json").read_text())["num_hidden_layers"]
    assert ops.count("MatMulInteger") >= 6 * layers  # and the head's, where it is a MatMul
