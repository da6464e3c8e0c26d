"""The command line itself: fast help, versions, bench output."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from clsx.cli import main
from tests.conftest import TEXTS, write_parquet


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


def test_bench_prints_a_table_and_writes_json(tiny_models, tmp_path):
    data = write_parquet(tmp_path / "data.parquet", TEXTS * 10)
    report = tmp_path / "bench.json"
    result = CliRunner().invoke(main, [
        "bench", "-m", str(tiny_models["bert"]), "--data", str(data), "--rows", "50",
        "--json", str(report), "--exports-dir", str(tmp_path / "exports"),
    ])
    assert result.exit_code == 0, result.output
    for variant in ("torch", "onnx", "onnx-int8"):
        assert f"\n{variant} " in result.output
    results = json.loads(report.read_text())["results"]
    assert [r["variant"] for r in results] == ["torch", "onnx", "onnx-int8"]
    assert results[0]["label_agreement"] == 1.0 and results[0]["speedup"] == 1.0
    assert results[1]["max_abs_diff"] < 1e-4 and results[1]["label_agreement"] == 1.0
    assert all(r["rows"] == 50 and r["rows_per_s"] > 0 for r in results)


def test_bench_rejects_unknown_backend(tiny_models, tmp_path):
    data = write_parquet(tmp_path / "data.parquet", TEXTS)
    result = CliRunner().invoke(main, ["bench", "-m", str(tiny_models["bert"]), "--data",
                                       str(data), "--backends", "torch,openvino"])
    assert result.exit_code == 1 and "unknown backend 'openvino'" in result.output
