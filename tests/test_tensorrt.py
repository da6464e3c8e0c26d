"""TensorRT: the export on any machine, the refusal without TensorRT, and (on a GPU with
TensorRT) the engine's parity with the PyTorch fp32 reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clsx.cli import main
from clsx.export.onnx import FP32_TOLERANCE
from clsx.inference.classifier import Classifier
from clsx.inference.runners import RunnerOptions
from clsx.inference.runners.tensorrt import (
    TENSORRT_DTYPES,
    TensorrtRunner,
    tensorrt_available,
    tensorrt_options,
)
from clsx.inference.scheduler import plan_batches
from clsx.quality.parity import PROB_TOLERANCES, compare
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


def profile_range(options: dict[str, Any], which: str) -> tuple[int, int]:
    """(rows, tokens) of the ``trt_profile_{which}_shapes`` option; every input the same."""
    shapes = {tuple(int(n) for n in shape.split(":")[1].split("x"))
              for shape in options[f"trt_profile_{which}_shapes"].split(",")}
    assert len(shapes) == 1, shapes  # input_ids and attention_mask always match
    return shapes.pop()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 1024), st.data())
def test_tensorrt_profile_covers_every_batch_the_scheduler_sends(max_length, data):
    """Whatever the texts, the batches the scheduler cuts with the TensorRT runner's own
    limits fit the engine's one profile: no engine rebuild for an unforeseen shape."""
    lengths = np.array(data.draw(st.lists(st.integers(1, max_length), min_size=1,
                                          max_size=600)))
    options = tensorrt_options(Path("cache"), max_length, TensorrtRunner.max_batch_rows,
                               TensorrtRunner.batch_tokens, "fp16")
    min_rows, min_tokens = profile_range(options, "min")
    max_rows, max_tokens = profile_range(options, "max")
    opt_rows, opt_tokens = profile_range(options, "opt")
    assert min_rows <= opt_rows <= max_rows and min_tokens <= opt_tokens <= max_tokens
    for batch in plan_batches(lengths, TensorrtRunner.batch_tokens,
                              TensorrtRunner.max_batch_rows):
        assert min_rows <= len(batch) <= max_rows
        assert min_tokens <= lengths[batch].max() <= max_tokens


@pytest.mark.parametrize("dtype", TENSORRT_DTYPES)
def test_tensorrt_engine_precision_and_cache_follow_the_options(dtype, tmp_path):
    options = tensorrt_options(tmp_path, 64, 8, 512, dtype)
    assert options["trt_fp16_enable"] == (dtype == "fp16")
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path)


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
