"""Temperature scaling: the fit and the measures on synthetic logits, the manifest field, the
probabilities users get, and ``clsx calibrate`` / ``train`` / ``eval`` on tiny models."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clsx.artifacts.artifact import open_artifact
from clsx.artifacts.manifest import MANIFEST_NAME, Manifest
from clsx.errors import ClsxError
from clsx.inference.decisions import MULTI, SINGLE, DecisionRule, probabilities
from clsx.quality.calibration import (
    before_and_after,
    brier_score,
    calibrate_manifest,
    expected_calibration_error,
    fit_temperatures,
    negative_log_likelihood,
)
from clsx.testing.tiny_models import build_tiny_classifier
from tests.conftest import TEXTS, predict_on_fake, run_clsx

LABELS = ("negative", "neutral", "positive")  # the tiny models' labels
BASE = dict(family="bert", labels=("a", "b", "c"), max_length=16, pad_token_id=0)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def over_confident(rows: int = 4000, labels: int = 4, scale: float = 3.0, seed: int = 0):
    """Logits ``scale`` times too large: labels are drawn from softmax(z), the model says
    softmax(scale * z)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, labels)) * 1.5
    p = softmax(z)
    gold = (rng.random((rows, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return (scale * z).astype(np.float32), gold


# --- the math, on synthetic logits ---------------------------------------------------------

def test_fit_recovers_a_known_temperature():
    logits, gold = over_confident(scale=3.0)
    (temperature,) = fit_temperatures(logits, gold, SINGLE)
    assert temperature == pytest.approx(3.0, rel=0.08)
    # Multi-label: one temperature per label, each recovered on its own.
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4000, 3)) * 2
    gold = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.float32)
    fitted = fit_temperatures((z * [0.5, 1.0, 3.0]).astype(np.float32), gold, MULTI)
    np.testing.assert_allclose(fitted, [0.5, 1.0, 3.0], rtol=0.1)


def test_calibration_lowers_ece_and_nll_and_keeps_the_argmax():
    logits, gold = over_confident(scale=2.5, seed=3)
    temperatures = fit_temperatures(logits, gold, SINGLE)
    report = before_and_after(logits, gold, SINGLE, temperatures)
    assert report["ece"] < report["ece_uncalibrated"] / 3
    assert report["nll"] < report["nll_uncalibrated"]
    assert report["brier"] < report["brier_uncalibrated"]
    calibrated = probabilities(logits, SINGLE, temperatures)
    assert (calibrated.argmax(axis=1) == logits.argmax(axis=1)).all()


def test_a_temperature_that_cannot_help_stays_one():
    gold = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], dtype=np.float32)
    logits = np.column_stack([np.zeros(4), [2.0, -1.0, 1.0, -2.0]]).astype(np.float32)
    assert fit_temperatures(logits, gold, MULTI)[0] == 1.0  # all-zero logits: NLL flat in T


def test_a_temperature_stopped_by_the_search_limit_is_reported():
    manifest = Manifest(**BASE, problem_type=SINGLE)
    separable = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]] * 4  # always right
    lines: list[str] = []
    fitted = calibrate_manifest(manifest, separable, np.array([0, 1, 2, 0, 1, 2]),
                                log=lines.append)
    assert fitted.temperatures[0] < 0.06 and len(lines) == 1
    assert lines[0].startswith(f"Temperature {fitted.temperatures[0]:g} is at the limit")
    logits, gold = over_confident(rows=500)
    calibrate_manifest(manifest.replace(labels=("a", "b", "c", "d")), logits, gold,
                       log=lines.append)
    assert len(lines) == 1  # a fitted value inside the range is not reported


def test_ece_and_brier_by_hand():
    # Single-label: confidences 0.9 and 0.92 share bin 13 of 15 (one right, one wrong),
    # 0.7 (right) is in bin 10, 0.65 (right) in bin 9.
    probs = np.array([[0.9, 0.1], [0.92, 0.08], [0.3, 0.7], [0.65, 0.35]])
    gold = np.array([0, 1, 1, 0])
    ece = (abs(1 - (0.9 + 0.92)) + abs(1 - 0.7) + abs(1 - 0.65)) / 4
    assert expected_calibration_error(probs, gold, SINGLE) == pytest.approx(ece)
    brier = (0.1**2 * 2 + (0.92**2 + 0.92**2) + 0.3**2 * 2 + 0.35**2 * 2) / 4
    assert brier_score(probs, gold, SINGLE) == pytest.approx(brier)
    # Multi-label: per label, probability against presence, then the mean over labels.
    probs = np.array([[0.9, 0.2], [0.4, 0.1]])
    gold = np.array([[1, 0], [1, 1]])
    label_0, label_1 = (0.1 + 0.6) / 2, (0.2 + 0.9) / 2
    assert expected_calibration_error(probs, gold, MULTI) == pytest.approx((label_0 + label_1) / 2)
    assert brier_score(probs, gold, MULTI) == pytest.approx((0.01 + 0.04 + 0.36 + 0.81) / 4)
    # A confidence of exactly 1 is counted (in the last bin); NLL of a sure right answer is 0.
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0]), SINGLE) == 0.0
    assert negative_log_likelihood(np.array([[50.0, 0.0]]), np.array([0]), SINGLE) < 1e-12
    nll = -(np.log(0.5) + np.log(1 / (1 + np.e))) / 2  # sigmoid(0) positive, sigmoid(1) negative
    assert negative_log_likelihood(np.array([[0.0, 1.0]]), np.array([[1, 0]]), MULTI) == (
        pytest.approx(nll))


def test_regression_is_not_calibrated():
    with pytest.raises(ClsxError, match="regression model's outputs are values"):
        fit_temperatures(np.zeros((3, 1)), np.zeros(3), "regression")


# --- the manifest field and the decision rule ----------------------------------------------

def test_manifest_round_trip_and_older_manifests(tmp_path):
    manifest = Manifest(**BASE, problem_type=MULTI, thresholds=(0.3, 0.4, 0.5),
                        temperatures=(1.5, 0.8, 2.25))
    manifest.save(tmp_path)
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["temperatures"] == [1.5, 0.8, 2.25]
    assert Manifest.load(tmp_path) == manifest
    older = {k: v for k, v in json.loads((tmp_path / MANIFEST_NAME).read_text()).items()
             if k != "temperatures"}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(older))
    assert Manifest.load(tmp_path).temperatures is None


@pytest.mark.parametrize("problem_type, temperatures, message", [
    (SINGLE, (1.0, 2.0), "one (single-label), got [1.0, 2.0]"),
    (SINGLE, (0.0,), "finite values > 0"),
    (SINGLE, (float("nan"),), "got [nan]"),
    (MULTI, (1.0, -1.0, 1.0), "one per label (3), got [1.0, -1.0, 1.0]"),
    (MULTI, (1.0,), "one per label (3), got [1.0]"),
    (MULTI, (1.0, float("inf"), 1.0), "got [1.0, inf, 1.0]"),
    ("regression", (2.0,), "a regression model has none"),
])
def test_invalid_temperatures_are_quoted(problem_type, temperatures, message):
    labels = BASE["labels"][:1] if problem_type == "regression" else BASE["labels"]
    with pytest.raises(ClsxError, match=re.escape(message)):
        Manifest(**{**BASE, "labels": labels}, problem_type=problem_type,
                 temperatures=temperatures)


def test_the_rule_applies_temperatures_before_softmax_sigmoid_and_thresholds():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], dtype=np.float32)
    rule = DecisionRule.of(Manifest(**BASE, problem_type=SINGLE, temperatures=(2.0,)))
    columns = rule.named_columns(logits)
    probs = np.array(columns["probs"].to_pylist())
    np.testing.assert_allclose(probs, softmax(logits / 2), rtol=1e-6)
    assert columns["label"].to_pylist() == ["a", "b"]  # the argmax does not move
    # Multi-label: sigmoid(1 / 2) = 0.62 misses a 0.65 cut-off that sigmoid(1) = 0.73 passes.
    multi = Manifest(**BASE, problem_type=MULTI, thresholds=(0.65, 0.65, 0.65))
    one = np.array([[1.0, 1.0, -3.0]], dtype=np.float32)
    assert DecisionRule.of(multi).named_columns(one)["labels"].to_pylist() == [["a", "b"]]
    calibrated = DecisionRule.of(multi.replace(temperatures=(2.0, 1.0, 1.0)))
    assert calibrated.named_columns(one)["labels"].to_pylist() == [["b"]]
    assert calibrated.decide(one).tolist() == [[False, True, False]]


def test_batch_predict_probabilities_use_the_temperatures(qwen2_copy, tmp_path, fake_runner):
    raw = predict_on_fake(fake_runner, tmp_path, qwen2_copy, TEXTS)
    Manifest.load(qwen2_copy).replace(temperatures=(2.0,)).save(qwen2_copy)
    calibrated = predict_on_fake(fake_runner, tmp_path, qwen2_copy, TEXTS)
    assert raw.result.exit_code == 0 and calibrated.result.exit_code == 0
    p = np.array(raw.table["probs"].to_pylist())
    # softmax(z / 2) = sqrt(softmax(z)), renormalised.
    expected = np.sqrt(p) / np.sqrt(p).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.array(calibrated.table["probs"].to_pylist()), expected,
                               rtol=1e-5)
    assert calibrated.table["label"].equals(raw.table["label"])
    np.testing.assert_allclose(calibrated.table["score"].to_numpy(), expected.max(axis=1),
                               rtol=1e-5)


# --- clsx calibrate ------------------------------------------------------------------------

def labelled(path, texts, labels):
    pq.write_table(pa.table({"text": texts, "label": labels}), path)
    return path


@pytest.fixture
def sample(tmp_path):
    texts = [f"review {i}: " + " ".join(TEXTS[i % len(TEXTS)].split()[: 3 + i % 5])
             for i in range(60)]
    return labelled(tmp_path / "sample.parquet", texts, [LABELS[i % 3] for i in range(60)])


def test_calibrate_writes_a_new_model_directory(tiny_models, sample, tmp_path, fake_runner):
    model, out = tiny_models["qwen2"], tmp_path / "calibrated"
    before = (model / MANIFEST_NAME).read_bytes()
    result = run_clsx("calibrate", "-m", model, "--data", sample, "--output", out)
    assert result.exit_code == 0, result.output
    assert (model / MANIFEST_NAME).read_bytes() == before  # the source is left alone
    assert {p.name for p in model.iterdir()} == {p.name for p in out.iterdir()}
    assert (out / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    manifest = Manifest.load(out)
    assert len(manifest.temperatures) == 1 and manifest.temperatures[0] > 0
    assert manifest.replace(temperatures=None) == Manifest.load(model)
    assert re.search(r"ECE \(15 bins\)\s+[\d.]+\s+[\d.]+", result.output)
    assert "NLL" in result.output and "before" in result.output
    assert f"Temperature scaling (fitted on 60 rows of {sample}" in result.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    again = run_clsx("calibrate", "-m", model, "--data", sample, "--output", out)
    assert again.exit_code == 1 and "pass --overwrite" in again.output


def test_calibrate_in_place_updates_only_the_manifest_atomically(qwen2_copy, sample,
                                                                 monkeypatch, fake_runner):
    original = (qwen2_copy / MANIFEST_NAME).read_bytes()
    files = sorted(p.name for p in qwen2_copy.iterdir())

    def no_rename(*args):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("clsx.io.durable.os.replace", no_rename)
        failed = run_clsx("calibrate", "-m", qwen2_copy, "--data", sample)
    assert failed.exit_code == 1
    assert f"Error: writing {qwen2_copy / MANIFEST_NAME} failed: No space left" in failed.output
    assert (qwen2_copy / MANIFEST_NAME).read_bytes() == original
    assert sorted(p.name for p in qwen2_copy.iterdir()) == files  # no temporary file left

    result = run_clsx("calibrate", "-m", qwen2_copy, "--data", sample)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in qwen2_copy.iterdir()) == files
    updated = json.loads((qwen2_copy / MANIFEST_NAME).read_text())
    assert len(updated.pop("temperatures")) == 1
    assert updated == {k: v for k, v in json.loads(original).items() if k != "temperatures"}


def test_calibrate_multi_label_retunes_thresholds(tmp_path, fake_runner):
    model = build_tiny_classifier(tmp_path / "m", "bert",
                                  problem_type="multi_label_classification")
    texts = [f"{word} review {i}" for i, word in enumerate(["good", "bad", "fine", "ok"] * 10)]
    data = labelled(tmp_path / "d.parquet", texts,
                    [",".join(LABELS[j] for j in range(3) if (i >> j) & 1) for i in range(40)])
    result = run_clsx("calibrate", "-m", model, "--data", data)
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(model)
    assert len(manifest.temperatures) == 3 and len(manifest.thresholds) == 3
    assert "Per-label thresholds (tuned on the calibrated probabilities of 40 rows" in (
        result.output)


def test_calibrate_refuses_regression_models(tmp_path):
    regression = build_tiny_classifier(tmp_path / "r", "bert", problem_type="regression")
    values = labelled(tmp_path / "v.parquet", ["a", "b"], [1.0, 2.0])
    result = run_clsx("calibrate", "-m", regression, "--data", values)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {regression} is a regression model: its outputs are values, not "
        "probabilities, so there is nothing to calibrate"]


def test_exports_are_refused_and_go_stale_when_their_parent_is_recalibrated(
        tiny_models, sample, tmp_path):
    from clsx.export.onnx import export_onnx

    parent = shutil.copytree(tiny_models["bert"], tmp_path / "parent")
    export = export_onnx(parent, tmp_path / "onnx").output
    result = run_clsx("calibrate", "-m", export, "--data", sample)
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        f"Error: {export} is an export (onnx); calibrate the PyTorch model it was exported from "
        f"({parent.resolve()}), then export it again"]
    result = run_clsx("calibrate", "-m", parent, "--data", sample, "--device", "cpu")
    assert result.exit_code == 0, result.output
    with pytest.raises(ClsxError, match="has changed since"):
        open_artifact(export)


# --- clsx train and clsx eval --------------------------------------------------------------

@pytest.mark.parametrize("problem_type, options, expected", [
    ("single_label", (), 1),
    ("single_label", ("--no-calibration",), None),
    ("multi_label", (), 3),  # food, neg, pos
])
def test_train_calibrates_unless_told_not_to(problem_type, options, expected, tiny_bases,
                                             tmp_path):
    texts = ["great food", "cold food", "lovely staff", "rude staff", "fast delivery",
             "late delivery", "very happy", "very angry"] * 2
    labels = (["pos", "neg"] * 8 if problem_type == "single_label"
              else ["pos,food" if i % 4 == 0 else "neg" for i in range(16)])
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                            for t, lab in zip(texts, labels, strict=True)))
    out = tmp_path / "model"
    result = run_clsx("train", "--model", tiny_bases["bert"], "--train", data, "--eval", data,
                      "--output", out, "--problem-type", problem_type, "--method", "full",
                      "--epochs", 1, "--batch-size", 8, "--max-length", 16, *options)
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    metrics = json.loads((out / "metrics.json").read_text())
    if expected is None:
        assert manifest.temperatures is None and "calibration" not in metrics
        assert manifest.training["calibration"] is False
        return
    assert len(manifest.temperatures) == expected and all(t > 0 for t in manifest.temperatures)
    assert set(metrics["calibration"]) == {"ece", "brier", "nll", "ece_uncalibrated",
                                           "brier_uncalibrated", "nll_uncalibrated"}
    assert metrics["calibration"]["nll"] <= metrics["calibration"]["nll_uncalibrated"] + 1e-9
    assert "Temperature scaling (fitted on the eval split" in result.output
    if problem_type == "multi_label":
        assert len(manifest.thresholds) == 3
        assert "tuned on the calibrated probabilities of the eval split" in result.output


def test_eval_reports_calibration_before_and_after(qwen2_copy, sample, tmp_path, fake_runner):
    Manifest.load(qwen2_copy).replace(temperatures=(2.0,)).save(qwen2_copy)
    report, rows = tmp_path / "metrics.json", tmp_path / "rows.parquet"
    result = run_clsx("eval", "-m", qwen2_copy, "--data", sample, "--backend", "torch",
                      "--json", report, "--predictions", rows)
    assert result.exit_code == 0, result.output
    metrics = json.loads(report.read_text())
    assert {"ece", "ece_uncalibrated", "brier", "brier_uncalibrated", "nll",
            "nll_uncalibrated"} <= set(metrics)
    predictions = pq.read_table(rows)
    probs = np.array(predictions["predicted_probs"].to_pylist())
    gold = np.array([LABELS.index(label) for label in predictions["label"].to_pylist()])
    assert metrics["ece"] == pytest.approx(expected_calibration_error(probs, gold, SINGLE))
    assert metrics["brier"] == pytest.approx(brier_score(probs, gold, SINGLE))
    raw = np.array(probs) ** 2  # T = 2 undone: softmax(z) is softmax(z / 2) squared, renormalised
    raw /= raw.sum(axis=1, keepdims=True)
    assert metrics["ece_uncalibrated"] == pytest.approx(
        expected_calibration_error(raw, gold, SINGLE), abs=1e-6)
    assert re.search(r"calibration\s+uncalibrated\s+calibrated", result.output)
    assert "ece_uncalibrated" not in result.output  # shown in the table, not as a scalar
