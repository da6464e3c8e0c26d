"""The command line itself: fast help, versions, bench output (real models: bench's subject
is how backends compare)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clsx.cli import main
from tests.conftest import TEXTS, run_clsx, write_parquet


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from click.testing import CliRunner; from clsx.cli import main; "
        "r = CliRunner().invoke(main, ['batch-predict', '--help']); assert r.exit_code == 0; "
        "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'pyarrow', 'vllm') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_help_explains_the_output_columns():
    result = CliRunner().invoke(main, ["batch-predict", "--help"])
    assert result.exit_code == 0
    for phrase in ("label", "score", "probs", "null", "truncated", "--overwrite"):
        assert phrase in result.output


def test_bench_compares_each_backend_with_torch_fp32(tiny_models, tiny_exports, tmp_path):
    data = write_parquet(tmp_path / "data.parquet", TEXTS * 10)
    report, exports = tmp_path / "bench.json", tmp_path / "exports"
    # The session's ONNX export of this model, where bench keeps its exports: bench reuses
    # it (the parent fingerprint it recorded matches) and exports only int8.
    shutil.copytree(tiny_exports["bert"], exports / "onnx")
    result = run_clsx("bench", "-m", tiny_models["bert"], "--data", data, "--rows", "50",
                      "--json", report, "--exports-dir", exports)
    assert result.exit_code == 0, result.output
    for variant in ("torch", "onnx", "onnx-int8", "onnx-int8 + re-check"):
        assert f"\n{variant} " in result.output
    assert "to onnx-int8 in" in result.output and "to onnx in" not in result.output
    results = json.loads(report.read_text())["results"]
    assert [r["variant"] for r in results] == ["torch", "onnx", "onnx-int8",
                                               "onnx-int8 + re-check"]
    reference, onnx, int8, rechecked = results
    assert reference["backend"] == "torch (fp32, cpu)"
    # ONNX fp32 and torch are two implementations of one model: same labels, logits within
    # the export gate. int8 is a different model: bench must see it differ (a bench that
    # compared the reference with itself would report 0 for both).
    assert onnx["label_agreement"] == 1.0 and onnx["max_abs_diff"] < 1e-4
    assert int8["max_abs_diff"] > max(onnx["max_abs_diff"], 1e-4)
    # The re-check row: int8's labels but where unsure, fp32's; never fewer equal labels.
    assert int8["rechecked"] is None and 0 <= rechecked["rechecked"] <= 1
    assert rechecked["label_agreement"] >= int8["label_agreement"]
    assert f"({rechecked['rechecked']:.1%} re-checked)" in result.output
    for row in results:
        assert row["rows"] == 50 and row["rows_per_s"] > 0
        assert row["speedup"] == pytest.approx(row["rows_per_s"] / reference["rows_per_s"],
                                               rel=0.01, abs=0.01)


def test_bench_calibrates_a_decoders_int8_export_on_its_own_texts(tiny_models, tmp_path):
    # export refuses decoder int8 without calibration texts; bench passes the texts it runs.
    data = write_parquet(tmp_path / "data.parquet", TEXTS * 3)
    exports = tmp_path / "exports"
    result = run_clsx("bench", "-m", tiny_models["llama"], "--data", data, "--rows", "24",
                      "--backends", "torch,onnx-int8", "--exports-dir", exports)
    assert result.exit_code == 0, result.output
    parity = json.loads((exports / "onnx-int8" / "clsx.json").read_text())["parity"]
    assert parity["int8_calibration"]["rows"] == 24


def test_bench_rejects_unknown_backend(tiny_models, tmp_path):
    data = write_parquet(tmp_path / "data.parquet", TEXTS)
    result = CliRunner().invoke(main, ["bench", "-m", str(tiny_models["bert"]), "--data",
                                       str(data), "--backends", "torch,tflite"])
    assert result.exit_code == 1 and "unknown backend 'tflite'" in result.output
