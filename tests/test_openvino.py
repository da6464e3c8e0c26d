"""The openvino backend and exports (fp32 IR, nncf int8): gated like the others, re-checked
below fp32 (int8 by the fp32 IR it carries), resumable, and refused in one line where
OpenVINO, nncf or the precision is missing.

Its parity with transformers for the three families is in tests/test_runners.py; its Ray
actors in tests/test_ray.py; ``--backend auto``'s search with and without it in
tests/test_autoformat.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clsx.auto.recheck import reference_opener
from clsx.errors import ClsxError
from clsx.inference.classifier import Classifier
from clsx.inference.runners import RunnerOptions
from clsx.inference.runners.openvino import OpenvinoRunner
from tests.conftest import TEXTS, interrupted_then_resumed, predict, run_clsx, write_parquet
from tests.test_recheck import random_texts, run_ok

openvino = pytest.importorskip("openvino", reason="install clsx[openvino]")
NATIVE_BF16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_openvino_runs_an_onnx_export_as_it_is(tiny_exports, tiny_openvino):
    texts = [t for t in TEXTS if t.strip()]
    with Classifier.open(tiny_exports["bert"], "openvino") as on_onnx, \
            Classifier.open(tiny_openvino["bert"]) as on_ir:
        assert on_ir.runner.description == "openvino (fp32, openvino, cpu)"
        np.testing.assert_allclose(on_onnx.predict_all(texts).logits,
                                   on_ir.predict_all(texts).logits, atol=1e-5)


def test_the_parity_gate_refuses_a_shifted_graph_and_leaves_nothing(tiny_models, tmp_path,
                                                                    monkeypatch):
    real = OpenvinoRunner.predict
    monkeypatch.setattr(OpenvinoRunner, "predict", lambda self, *inputs: real(self, *inputs)
                        + np.float32(1e-3))
    out = tmp_path / "ov"
    result = run_clsx("export", tiny_models["bert"], "--format", "openvino", "--output", out)
    assert result.exit_code == 1
    assert "Error: the OpenVINO graph differs from PyTorch by 1.00e-03 (> 1e-04)" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 for OpenVINO")
def test_bf16_is_rechecked_by_openvino_fp32(tiny_openvino, tmp_path):
    with Classifier.open(tiny_openvino["bert"], "openvino", RunnerOptions(dtype="bf16")) as fast:
        assert fast.runner.precision == "bf16"
        reference = reference_opener(fast)()
    assert isinstance(reference, OpenvinoRunner) and reference.precision == "fp32"
    source = write_parquet(tmp_path / "in.parquet", random_texts(300, seed=2))
    exact, _ = run_ok(source, tmp_path / "fp32.parquet", tiny_openvino["bert"])
    table, output = run_ok(source, tmp_path / "bf16.parquet", tiny_openvino["bert"],
                           "--dtype", "bf16")
    assert "rows re-checked in fp32" in output
    assert table.column("label").equals(exact.column("label"))


def test_precisions_the_cpu_lacks_and_gpus_are_refused(tiny_openvino, monkeypatch):
    with pytest.raises(ClsxError, match="the openvino backend runs on the CPU"):
        Classifier.open(tiny_openvino["bert"], "openvino", RunnerOptions(device="cuda"))
    monkeypatch.setattr(openvino.Core, "get_property", lambda self, *args: ["FP32"])
    with pytest.raises(ClsxError, match="this CPU does not compute bf16 natively for "
                                        "OpenVINO; use --dtype fp32"):
        Classifier.open(tiny_openvino["bert"], "openvino", RunnerOptions(dtype="bf16"))


def test_a_killed_openvino_job_resumes_to_the_same_output(tiny_openvino, tmp_path,
                                                          monkeypatch):
    source = write_parquet(tmp_path / "in.parquet", random_texts(120, seed=5))
    options = ("--window-rows", "30", "--part-rows", "30")
    whole, _ = run_ok(source, tmp_path / "whole.parquet", tiny_openvino["bert"], *options)
    out = tmp_path / "out.parquet"
    interrupted_then_resumed(source, out, tiny_openvino["bert"], 2, monkeypatch, *options)
    assert pq.read_table(out).equals(whole)


def test_without_openvino_backend_and_export_are_refused_in_one_line(
        tiny_models, tiny_exports, texts_parquet, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises
    hint = ("Error: the openvino backend needs OpenVINO, which is not installed; install it "
            "with `pip install 'clsx[openvino]'`\n")
    result = predict(texts_parquet, tmp_path / "out.parquet", "-m", tiny_exports["bert"],
                     "--backend", "openvino")
    assert result.exit_code == 1 and result.output.endswith(hint)
    assert not (tmp_path / "out.parquet").exists()
    export = run_clsx("export", tiny_models["bert"], "--format", "openvino", "--output",
                      tmp_path / "ov")
    assert export.exit_code == 1 and export.output.endswith(hint)
    assert not (tmp_path / "ov").exists()


@pytest.fixture(scope="module")
def orphan_int8(tiny_models, tmp_path_factory):
    """A copy of the tiny Qwen2, its fp32 labels on 200 texts, and its openvino-int8 export
    (calibrated on 300 other texts) made through the CLI; the copy is then deleted, so that
    the export's re-check can only use the fp32 IR it carries."""
    root = tmp_path_factory.mktemp("openvino-int8")
    parent = Path(shutil.copytree(tiny_models["qwen2"], root / "qwen2"))
    source = write_parquet(root / "in.parquet", random_texts(200, seed=7))
    exact, _ = run_ok(source, root / "fp32.parquet", parent, "--backend", "torch",
                      "--dtype", "fp32")
    calibration = write_parquet(root / "calibration.parquet", random_texts(300, seed=1))
    export = run_clsx("export", parent, "--format", "openvino-int8", "--output",
                      root / "int8", "--calibration-data", calibration)
    assert export.exit_code == 0, export.output
    shutil.rmtree(parent)
    return root / "int8", source, exact, export.output


def test_openvino_int8_is_gated_on_calibration_texts_and_rechecked_by_its_own_fp32_ir(
        orphan_int8, tmp_path):
    int8, source, exact, export_output = orphan_int8
    assert "parity int8_calibration: 300 rows" in export_output
    assert "re-check: re-check below margin" in export_output
    manifest = json.loads((int8 / "clsx.json").read_text())
    assert manifest["format"] == "openvino-int8"
    assert {"fp32", "int8_calibration", "recheck"} <= set(manifest["parity"])
    with Classifier.open(int8) as fast:
        elsewhere = "bf16" if NATIVE_BF16 else "fp32"  # the ops outside int8, by default
        assert fast.runner.description == (f"openvino (int8, {elsewhere} elsewhere, "
                                           "openvino-int8, cpu)")
        reference = reference_opener(fast)()  # the parent is gone: its own fp32 IR
    assert isinstance(reference, OpenvinoRunner) and reference.precision == "fp32"
    table, output = run_ok(source, tmp_path / "int8.parquet", int8)
    assert "backend openvino (int8, " in output
    assert "rows re-checked in fp32" in output
    assert table.column("label").equals(exact.column("label"))


def test_openvino_int8_refusals_leave_nothing(tiny_models, tmp_path, monkeypatch):
    out = tmp_path / "int8"
    no_texts = run_clsx("export", tiny_models["bert"], "--format", "openvino-int8",
                        "--output", out)
    assert no_texts.exit_code == 1
    assert "--format openvino-int8 needs --calibration-data" in no_texts.output
    calibration = write_parquet(tmp_path / "calibration.parquet", random_texts(40, seed=1))
    real = OpenvinoRunner.predict
    monkeypatch.setattr(OpenvinoRunner, "predict", lambda self, *inputs: (
        -real(self, *inputs) if self.precision == "int8" else real(self, *inputs)))
    flipped = run_clsx("export", tiny_models["bert"], "--format", "openvino-int8", "--output",
                       out, "--calibration-data", calibration)
    assert flipped.exit_code == 1
    # Refused after a second try with the feed-forward outputs and the head in fp32.
    assert ("of the 40 calibration rows even with the feed-forward outputs and head in fp32 "
            "(< 98.00%); keep the fp32 export") in flipped.output
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf now raises
    no_nncf = run_clsx("export", tiny_models["bert"], "--format", "openvino-int8", "--output",
                       out, "--calibration-data", calibration)
    assert no_nncf.exit_code == 1
    assert no_nncf.output.endswith("Error: --format openvino-int8 quantizes with nncf, which is "
                                   "not installed; install it with `pip install "
                                   "'clsx[openvino]'`\n")
    assert list(tmp_path.iterdir()) == [calibration]
