"""ONNX export: parity written to the manifest, gates that refuse, nothing half-written."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
from click.testing import CliRunner

from clsx.artifacts.artifact import open_artifact
from clsx.cli import main
from clsx.errors import ClsxError
from clsx.export.onnx import FP32_TOLERANCE, export_onnx
from clsx.testing.tiny_models import FAMILIES, build_tiny_classifier
from tests.conftest import TEXTS, predict, write_parquet


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_export_records_parity_and_parent(family, tiny_models, tiny_exports):
    export = tiny_exports[family]
    assert {"model.onnx", "config.json", "tokenizer.json", "clsx.json"} <= {
        p.name for p in export.iterdir()
    }
    manifest = json.loads((export / "clsx.json").read_text())
    assert manifest["format"] == "onnx"
    assert manifest["parity"]["fp32"]["max_abs_diff"] <= FP32_TOLERANCE
    assert manifest["parity"]["fp32"]["label_agreement"] == 1.0
    assert (export / manifest["parent"]).resolve() == tiny_models[family].resolve()


def test_cli_export_fails_the_gate_and_leaves_nothing(tiny_models, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["export", str(tiny_models["llama"]), "-o", str(out), "--tolerance", "0"]
    )
    assert result.exit_code == 1
    assert "differs from PyTorch" in result.output and "Traceback" not in result.output
    assert not out.exists() and leftovers(tmp_path) == []


def test_cli_int8_export_with_calibration_data(tiny_models, tmp_path):
    sample = write_parquet(tmp_path / "sample.parquet", TEXTS * 4)
    out = tmp_path / "int8"
    result = CliRunner().invoke(main, [
        "export", str(tiny_models["bert"]), "--format", "onnx-int8", "-o", str(out),
        "--calibration-data", str(sample), "--min-agreement", "0.5",
    ])
    assert result.exit_code == 0, result.output
    assert "parity int8_calibration: 32 rows" in result.output
    manifest = open_artifact(out).manifest
    assert manifest.format == "onnx-int8"
    assert set(manifest.parity) == {"fp32", "int8_parity_batch", "int8_calibration", "recheck"}
    assert manifest.parity["recheck"]["rows"] == 32 and "re-check: re-check below" in result.output
    assert not list(out.glob("model-fp32*"))
    # A run of the export re-checks at the cut the export measured, without measuring again.
    ran = predict(sample, tmp_path / "o.parquet", "-m", out)
    assert ran.exit_code == 0, ran.output
    assert "rows re-checked in fp32" in ran.output and "measuring" not in ran.output


def test_int8_agreement_gate_refuses(tiny_models, tmp_path):
    with pytest.raises(ClsxError, match="int8 labels agree with fp32"):
        export_onnx(tiny_models["qwen2"], tmp_path / "int8", fmt="onnx-int8",
                    calibration_texts=TEXTS, min_agreement=1.01)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_decoder_int8_without_calibration_texts_is_refused_first(family, tiny_models,
                                                                 tmp_path, monkeypatch):
    # Refused before the model is loaded or exported: nothing after the check may run.
    monkeypatch.setattr("clsx.export.onnx.parity_inputs", None)
    out = tmp_path / "int8"
    result = CliRunner().invoke(main, ["export", str(tiny_models[family]), "--format",
                                       "onnx-int8", "-o", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: int8 export of a {family} (decoder) classifier needs --calibration-data: "
        "random-token parity batches have passed decoders whose int8 labels then changed on "
        "real texts; pass a few hundred texts like the ones it will classify")
    assert list(tmp_path.iterdir()) == []


def test_int8_keeps_sensitive_layers_in_fp32_when_full_int8_misses_the_gate(
        tiny_models, tmp_path, monkeypatch):
    from clsx.export import quantize as int8_export

    plans, quantize, measure = [], int8_export.quantize_int8, int8_export._int8_parity

    def recording(fp32_path, int8_path, fp32_nodes):
        plans.append(fp32_nodes)
        quantize(fp32_path, int8_path, fp32_nodes)

    def failing_first(*args):
        reports, logits = measure(*args)
        if len(plans) == 1:  # pretend that int8 everywhere flipped half the labels
            reports["int8_calibration"] = replace(reports["int8_calibration"],
                                                  label_agreement=0.5)
        return reports, logits

    monkeypatch.setattr(int8_export, "quantize_int8", recording)
    monkeypatch.setattr(int8_export, "_int8_parity", failing_first)
    result = export_onnx(tiny_models["qwen2"], tmp_path / "int8", fmt="onnx-int8",
                         calibration_texts=TEXTS, min_agreement=0.6)
    layers = json.loads((tiny_models["qwen2"] / "config.json").read_text())["num_hidden_layers"]
    assert plans[0] == [] and len(plans[1]) == layers + 1  # each down_proj, and the head
    assert result.manifest.parity["int8_calibration_all_matmuls"]["label_agreement"] == 0.5
    assert result.notes[0].startswith(f"int8: {layers + 1} feed-forward output and head")


def test_existing_output_needs_overwrite(tiny_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["export", str(tiny_models["bert"]), "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert (out / "keep.txt").exists()
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "model.onnx").exists()


def test_export_of_an_export_is_refused(tiny_exports, tmp_path):
    args = ["export", str(tiny_exports["bert"]), "-o", str(tmp_path / "x")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "already a onnx export" in result.output


def test_vllm_export_without_vllm_says_how_to_install_it(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    result = CliRunner().invoke(main, ["export", str(tiny_models["qwen2"]), "--format", "vllm",
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "make setup-vllm" in result.output and "--no-parity" in result.output
    assert list(tmp_path.iterdir()) == []


def test_vllm_export_without_parity_check(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(tiny_models["llama"]), "--format", "vllm",
                                       "-o", str(out), "--no-parity"])
    assert result.exit_code == 0, result.output
    manifest = open_artifact(out).manifest
    assert manifest.format == "vllm" and manifest.parity == {}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_vllm_export_refuses_encoders(tiny_models, tmp_path):
    result = CliRunner().invoke(main, ["export", str(tiny_models["bert"]), "--format", "vllm",
                                       "-o", str(tmp_path / "out"), "--no-parity"])
    assert result.exit_code == 1 and "--format onnx" in result.output



def _push_down_negative_logits(fp32_path, int8_path, fp32_nodes):
    """A stand-in for int8 quantization: the fp32 graph with every negative logit lowered by
    10, so a probability under 0.5 falls near 0 and one at or above 0.5 stays as it was."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(fp32_path))
    for node in model.graph.node:
        node.output[:] = ["raw_logits" if name == "logits" else name for name in node.output]
    model.graph.initializer.extend([numpy_helper.from_array(np.float32(0.0), "zero"),
                                    numpy_helper.from_array(np.float32(-10.0), "push")])
    model.graph.node.extend([
        helper.make_node("Less", ["raw_logits", "zero"], ["negative"]),
        helper.make_node("Cast", ["negative"], ["negative_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["negative_float", "push"], ["pushed"]),
        helper.make_node("Add", ["raw_logits", "pushed"], ["logits"]),
    ])
    onnx.save(model, str(int8_path))


def test_int8_gate_measures_multi_label_agreement_at_the_models_thresholds(tmp_path,
                                                                           monkeypatch):
    from clsx.artifacts.manifest import Manifest
    from clsx.export import quantize as int8_export

    model = build_tiny_classifier(tmp_path / "multi", "bert",
                                  problem_type="multi_label_classification")
    monkeypatch.setattr(int8_export, "quantize_int8", _push_down_negative_logits)
    # At 0.5 no decision moves (probabilities only move below 0.5): the gate passes.
    passed = export_onnx(model, tmp_path / "at-one-half", fmt="onnx-int8")
    assert passed.parity["int8_parity_batch"].label_agreement == 1.0
    # At thresholds tuned to 0.01 the same move drops labels that fp32 predicts: refused.
    manifest = Manifest.load(model)
    manifest.replace(thresholds=(0.01,) * manifest.num_labels).save(model)
    with pytest.raises(ClsxError, match=r"int8 labels agree with fp32 on \d+\.\d+% of the 32"):
        export_onnx(model, tmp_path / "tuned", fmt="onnx-int8")
    assert not (tmp_path / "tuned").exists()


def test_int8_weights_use_seven_bits(tiny_models, tmp_path):
    # 8-bit weights saturate u8s8 products on CPUs without VNNI; 7 bits never do.
    import numpy as np
    import onnx
    from onnx import numpy_helper

    export_onnx(tiny_models["bert"], tmp_path / "int8", fmt="onnx-int8", min_agreement=0.0)
    weights = [numpy_helper.to_array(t) for t in onnx.load(
        str(tmp_path / "int8" / "model.onnx")).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and t.dims]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) == 64
