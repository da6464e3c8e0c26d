"""TensorRT: the export on any machine, the refusal without TensorRT, and (on a GPU with
TensorRT) the engine's parity with the PyTorch fp32 reference."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from clsx.classifier import Classifier
from clsx.cli import main
from clsx.export.onnx import FP32_TOLERANCE
from clsx.export.parity import PROB_TOLERANCES, compare
from clsx.runners import RunnerOptions
from clsx.runners.tensorrt import tensorrt_available, tensorrt_options
from tests.conftest import TEXTS, write_parquet


@pytest.mark.skipif(tensorrt_available(), reason="checks the machine without TensorRT")
def test_tensorrt_export_is_the_checked_fp32_graph_and_refuses_to_run_without_tensorrt(
        tiny_models, tmp_path):
    out = tmp_path / "trt"
    result = CliRunner().invoke(main, ["export", str(tiny_models["qwen2"]), "--format",
                                       "tensorrt", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "built (and cached in the export) on first use" in result.output
    manifest = json.loads((out / "clsx.json").read_text())
    assert manifest["format"] == "tensorrt"
    assert manifest["parity"]["fp32"]["max_abs_diff"] <= FP32_TOLERANCE
    texts = write_parquet(tmp_path / "in.parquet", TEXTS)
    run = CliRunner().invoke(main, ["batch-predict", str(texts), str(tmp_path / "out.parquet"),
                                    "-m", str(out), "--device", "cpu"])
    assert run.exit_code == 1 and "runs on an NVIDIA GPU" in run.output
    assert "Traceback" not in run.output
    bench = CliRunner().invoke(main, ["bench", "-m", str(tiny_models["qwen2"]), "--data",
                                      str(texts), "--backends", "tensorrt"])
    assert bench.exit_code == 1 and "runs on an NVIDIA GPU" in bench.output
    assert "bench: running" not in bench.output  # refused before measuring anything


def test_tensorrt_profile_covers_every_batch_the_scheduler_sends(tmp_path):
    options = tensorrt_options(tmp_path, max_length=512, max_rows=256, batch_tokens=32768,
                               dtype="fp16")
    assert options["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert options["trt_profile_max_shapes"] == "input_ids:256x512,attention_mask:256x512"
    assert options["trt_profile_opt_shapes"] == "input_ids:128x256,attention_mask:128x256"
    assert options["trt_fp16_enable"] and options["trt_engine_cache_path"] == str(tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["qwen2", "bert"])
def test_tensorrt_engine_matches_pytorch_fp32(family, tiny_models, tmp_path):
    if not tensorrt_available():
        pytest.fail("the gpu tests need onnxruntime-gpu with TensorRT")
    out = tmp_path / "trt"
    result = CliRunner().invoke(main, ["export", str(tiny_models[family]), "--format",
                                       "tensorrt", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "clsx.json").read_text())["parity"]["tensorrt"]
    reference = Classifier.open(tiny_models[family], "torch", RunnerOptions(device="cpu"))
    engine = Classifier.open(out, "tensorrt", RunnerOptions(device="cuda"))
    assert (out / "tensorrt-cache").is_dir()
    report = compare(reference.predict_all(TEXTS).logits, engine.predict_all(TEXTS).logits,
                     engine.rule)
    assert report.max_prob_diff <= PROB_TOLERANCES["fp16"]
    assert report.label_agreement >= 0.98
