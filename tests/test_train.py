"""``clsx train`` and ``clsx eval`` on tiny random base models, end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, set_seed

from clsx.classifier import Classifier
from clsx.cli import main
from clsx.testing import FAMILIES
from clsx.train import trainer as trainer_module

POSITIVE = ["great food", "lovely staff", "fast delivery", "works perfectly", "very happy",
            "excellent value", "would buy again", "superb sound"]
NEGATIVE = ["cold food", "rude staff", "late delivery", "broke in a day", "very angry",
            "waste of money", "never again", "awful sound"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def sentiment(tmp_path):
    rows = [{"text": t, "label": "pos"} for t in POSITIVE] + [
        {"text": t, "label": "neg"} for t in NEGATIVE]
    return write_jsonl(tmp_path / "train.jsonl", rows)


def train(*args, max_length: int = 32):
    return CliRunner().invoke(main, ["train", *map(str, args), "--epochs", "2", "--batch-size",
                                     "4", "--lr", "1e-3", "--max-length", str(max_length)])


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_training_merges_into_an_equivalent_model(family, tiny_bases, sentiment, tmp_path):
    out = tmp_path / "model"
    result = train("--model", tiny_bases[family], "--train", sentiment, "--eval", sentiment,
                   "--output", out, "--lora-r", "4", "--lora-alpha", "8")
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "tokenizer.json", "clsx.json", "metrics.json",
            "adapter"} <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "clsx.json").read_text())
    assert manifest["labels"] == ["neg", "pos"] and manifest["family"] == family
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 2
    assert not list(tmp_path.glob(".*"))  # no work directory or staging left behind

    set_seed(42)  # train() seeds before creating the head: this is the untrained head
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bases[family], num_labels=2)
    base.config.pad_token_id = manifest["pad_token_id"]
    initial_head = (base.classifier if family == "bert" else base.score).weight.detach().clone()
    lora = PeftModel.from_pretrained(base, out / "adapter").eval()
    texts = POSITIVE + NEGATIVE
    pipeline = Classifier.open(out, "torch")
    merged_logits = pipeline.predict_all(texts).logits
    with torch.inference_mode():
        lora_logits = np.stack([
            lora(**pipeline.artifact.tokenizer(t, return_tensors="pt")).logits[0].numpy()
            for t in texts])
    np.testing.assert_allclose(merged_logits, lora_logits, atol=1e-5)
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    merged_head = (merged.classifier if family == "bert" else merged.score).weight
    assert not torch.allclose(merged_head, initial_head)


@pytest.mark.parametrize("problem_type, rows, check", [
    ("multi_label", [{"text": t, "label": "a,b" if i % 3 == 0 else "b"}
                     for i, t in enumerate(POSITIVE + NEGATIVE)], "subset_accuracy"),
    ("regression", [{"text": t, "label": float(i % 5)}
                    for i, t in enumerate(POSITIVE + NEGATIVE)], "mse"),
    ("single_label", [{"text": t, "label": i % 3} for i, t in enumerate(POSITIVE + NEGATIVE)],
     "macro_f1"),
])
def test_problem_types_train_eval_and_predict(problem_type, rows, check, tiny_bases, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "model"
    result = train("--model", tiny_bases["bert"], "--train", data, "--eval", data, "--output",
                   out, "--problem-type", problem_type, "--method", "full")
    assert result.exit_code == 0, result.output
    report = tmp_path / "metrics.json"
    result = CliRunner().invoke(main, ["eval", "-m", str(out), "--data", str(data), "--json",
                                       str(report), "--tune-threshold"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(report.read_text())
    assert check in metrics and metrics["rows"] == len(rows)
    if problem_type == "multi_label":  # cut-offs tuned per label on the eval split
        thresholds = json.loads((out / "clsx.json").read_text())["thresholds"]
        assert len(thresholds) == 2 and all(0 < t < 1 for t in thresholds)
    if problem_type == "single_label":
        assert json.loads((out / "clsx.json").read_text())["labels"] == ["0", "1", "2"]
        assert np.array(metrics["confusion_matrix"]["matrix"]).sum() == len(rows)
    source = tmp_path / "in.parquet"
    pq.write_table(_texts_table(rows), source)
    result = CliRunner().invoke(main, ["batch-predict", str(source), str(tmp_path / "o.parquet"),
                                       "-m", str(out), "-q"])
    assert result.exit_code == 0, result.output


def _texts_table(rows):
    import pyarrow as pa

    return pa.table({"text": [r["text"] for r in rows]})


def test_template_and_label_descriptions_reach_predict_time(tiny_bases, sentiment, tmp_path):
    descriptions = write_jsonl(tmp_path / "d.json", [{"pos": "happy", "neg": "unhappy"}])
    out = tmp_path / "model"
    result = train("--model", tiny_bases["llama"], "--train", sentiment, "--output", out,
                   "--template", "Review: {text}\nLabels:\n{labels}", "--label-descriptions",
                   descriptions, "--eval-fraction", "0.25", max_length=64)
    assert result.exit_code == 0, result.output
    pipeline = Classifier.open(out)
    template = "Review: {text}\nLabels:\n- neg: unhappy\n- pos: happy"
    assert pipeline.artifact.manifest.template == template
    tokenizer = pipeline.artifact.tokenizer
    expected = tokenizer(template.replace("{text}", "nice"))["input_ids"]
    assert pipeline.encoder.encode(["nice"]).ids[0] == expected


def test_interrupted_training_resumes(tiny_bases, sentiment, tmp_path, monkeypatch):
    class InterruptAtOnce(trainer_module._Interrupt):
        def __init__(self):
            super().__init__()
            self.flag = True

    out = tmp_path / "model"
    args = ["--model", tiny_bases["bert"], "--train", sentiment, "--eval", sentiment,
            "--output", out]
    monkeypatch.setattr(trainer_module, "_Interrupt", InterruptAtOnce)
    result = train(*args)
    assert result.exit_code == 130 and not out.exists()
    assert list((tmp_path / ".model.clsx-train").glob("checkpoint-1"))
    monkeypatch.undo()
    result = train(*args)
    assert result.exit_code == 1 and "add --resume" in result.output
    result = train(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert out.is_dir() and not (tmp_path / ".model.clsx-train").exists()


def test_eval_refuses_labels_the_model_does_not_know(tiny_bases, sentiment, tmp_path):
    out = tmp_path / "model"
    assert train("--model", tiny_bases["bert"], "--train", sentiment, "--eval", sentiment,
                 "--output", out, "--epochs", "1").exit_code == 0
    data = write_jsonl(tmp_path / "eval.jsonl", [{"text": "x", "label": "meh"}])
    result = CliRunner().invoke(main, ["eval", "-m", str(out), "--data", str(data)])
    assert result.exit_code == 1
    assert "labels the model does not know: 'meh'; known labels: neg, pos" in result.output


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_label_head_starts_at_the_label_prior(family, tiny_bases):
    """Rare labels: a head at 0 first drags every output to the prior, which can flatten the
    encoder; a head with a bias starts there instead (decoders' ``score`` has none)."""
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bases[family], num_labels=3, problem_type="multi_label_classification")
    targets = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0]], np.float32)
    trainer_module._start_at_label_prior(model, targets)
    bias = getattr(getattr(model, "classifier", None), "bias", None)
    if family == "bert":
        share = np.array([0.5, 0.25, 1e-4])
        np.testing.assert_allclose(bias.detach().numpy(), np.log(share / (1 - share)), rtol=1e-5)
    else:
        assert bias is None and model.score.bias is None
