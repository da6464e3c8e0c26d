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


def test_bench_runs_a_cascade_of_a_compared_model_into_the_benched_one(tiny_models, tmp_path):
    """--cascade-agreement: the compared model (a random static model, which disagrees with
    the benched one on a third of the rows here) sends its unsure rows to the benched model,
    at the cut that keeps 99% of its labels on the bench's rows (all of them: fewer than
    512)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.test_distill import hand_made_static

    static, _, _ = hand_made_static(tiny_models["bert"], tmp_path / "static")
    manifest = json.loads((static / "clsx.json").read_text())
    manifest["labels"] = json.loads((tiny_models["bert"] / "clsx.json").read_text())["labels"]
    (static / "clsx.json").write_text(json.dumps(manifest))
    data = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": [f"{t} {i}" for i in range(40) for t in TEXTS]}), data)
    report = tmp_path / "bench.json"
    result = run_clsx("bench", "-m", tiny_models["bert"], "--data", data, "--backends", "torch",
                      "--compare-model", static, "--cascade-agreement", "0.99", "--json",
                      report)
    assert result.exit_code == 0, result.output
    _, alone, cascade = json.loads(report.read_text())["results"]
    assert cascade["variant"] == f"static -> {tiny_models['bert'].name} (cascade)"
    assert cascade["compared"] and cascade["backend"].startswith("static")
    assert alone["label_agreement"] < 0.99 <= cascade["label_agreement"]
    assert 0 < cascade["sent"] < 1 and alone["sent"] is None
    assert f"({cascade['sent']:.1%} sent)" in result.output
    alone_only = run_clsx("bench", "-m", tiny_models["bert"], "--data", data,
                          "--cascade-agreement", "0.99")
    assert alone_only.exit_code == 1 and "add --compare-model" in alone_only.output


def test_bench_compares_other_models_and_plots_accuracy_against_speed(tiny_models, tiny_exports,
                                                                      tmp_path):
    """--compare-model runs another model with the same labels on the same rows (here the
    fp32 ONNX export: the torch reference's labels, so its agreement is 100%);
    --label-column adds accuracy, and the report plots it against rows/s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = ["negative", "neutral", "positive"]
    rows = 30
    data = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": (TEXTS * 10)[:rows],
                             "label": [labels[i % 3] for i in range(rows)]}), data)
    report, page = tmp_path / "bench.json", tmp_path / "bench.html"
    result = run_clsx("bench", "-m", tiny_models["bert"], "--data", data, "--backends", "torch",
                      "--compare-model", tiny_exports["bert"], "--label-column", "label",
                      "--json", report, "--report", page)
    assert result.exit_code == 0, result.output
    reference, compared = json.loads(report.read_text())["results"]
    assert compared["variant"] == f"{tiny_exports['bert'].name} (auto)" and compared["compared"]
    assert compared["backend"].startswith("onnx") and compared["label_agreement"] == 1.0
    assert reference["accuracy"] == compared["accuracy"] and 0 <= reference["accuracy"] <= 1
    header = next(line for line in result.output.splitlines() if line.startswith("variant"))
    assert header.rstrip().endswith("accuracy")
    assert "Accuracy against speed" in page.read_text()
    # Another label set, or a gold label the model does not have: one line each.
    other = tmp_path / "other"
    shutil.copytree(tiny_exports["bert"], other)
    manifest = json.loads((other / "clsx.json").read_text())
    manifest["labels"] = ["a", "b", "c"]
    (other / "clsx.json").write_text(json.dumps(manifest))
    refused = run_clsx("bench", "-m", tiny_models["bert"], "--data", data, "--compare-model",
                       other)
    assert refused.exit_code == 1 and "must have the labels and problem type" in refused.output
    pq.write_table(pa.table({"text": TEXTS, "label": ["happy"] * len(TEXTS)}), data)
    unknown = run_clsx("bench", "-m", tiny_models["bert"], "--data", data, "--backends", "torch",
                       "--label-column", "label")
    assert unknown.exit_code == 1 and "has labels the model does not know: 'happy'" in (
        unknown.output)
