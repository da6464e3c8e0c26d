"""``clsx train`` and ``clsx eval`` on tiny random base models, end to end."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, set_seed

from clsx.cli import main
from clsx.inference.classifier import Classifier
from clsx.testing.tiny_models import FAMILIES
from clsx.train import hf_trainer
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
    class InterruptAtOnce(hf_trainer.Interrupt):
        def __init__(self, *args):
            super().__init__(*args)
            self.flag = True

    out = tmp_path / "model"
    args = ["--model", tiny_bases["bert"], "--train", sentiment, "--eval", sentiment,
            "--output", out]
    monkeypatch.setattr(hf_trainer, "Interrupt", InterruptAtOnce)
    result = train(*args)
    assert result.exit_code == 130 and not out.exists()
    assert "Interrupted: a checkpoint is saved in" in result.output and "--resume" in result.output
    assert list((tmp_path / ".model.clsx-train").glob("checkpoint-1"))
    monkeypatch.undo()
    result = train(*args)
    assert result.exit_code == 1 and "add --resume" in result.output
    result = train(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert out.is_dir() and not (tmp_path / ".model.clsx-train").exists()


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


def test_metrics_json_records_the_checkpoint_the_trainer_kept(tiny_bases, sentiment, tmp_path,
                                                              monkeypatch):
    """metrics.json's best epoch is trainer.state's best checkpoint, whose weights are saved."""
    from clsx.evaluation.config import EvalConfig
    from clsx.evaluation.evaluate import evaluate

    trainers = []
    build = trainer_module.build_trainer
    monkeypatch.setattr(trainer_module, "build_trainer",
                        lambda *args: trainers.append(build(*args)) or trainers[-1])
    out = tmp_path / "model"
    result = CliRunner().invoke(main, [
        "train", "--model", str(tiny_bases["bert"]), "--train", str(sentiment), "--eval",
        str(sentiment), "--output", str(out), "--method", "full", "--epochs", "3",
        "--batch-size", "4", "--lr", "1e-3", "--max-length", "32"])
    assert result.exit_code == 0, result.output
    state = trainers[0].state
    step = int(state.best_model_checkpoint.rsplit("-", 1)[-1])
    kept = next(e for e in state.log_history if "eval_loss" in e and e["step"] == step)
    recorded = json.loads((out / "metrics.json").read_text())
    assert len(recorded["epochs"]) == 3
    assert recorded["best"]["epoch"] == kept["epoch"]
    assert recorded["best"]["macro_f1"] == state.best_metric == kept["eval_macro_f1"]
    assert json.loads((out / "clsx.json").read_text())["training"]["best_epoch"] == kept["epoch"]
    again = evaluate(EvalConfig(out, sentiment, backend="torch")).metrics  # the saved weights
    assert again["macro_f1"] == pytest.approx(recorded["best"]["macro_f1"])
    assert again["accuracy"] == pytest.approx(recorded["best"]["accuracy"])


def test_best_epoch_is_read_from_the_trainer_state():
    """A NaN first epoch: the Trainer keeps epoch 2, which max/min over the log would not."""
    from types import SimpleNamespace

    nan = float("nan")
    history = [{"loss": 1.0, "epoch": 1.0, "step": 2},
               {"eval_loss": nan, "eval_mse": nan, "epoch": 1.0, "step": 2},
               {"eval_loss": 0.7, "eval_mse": 0.5, "epoch": 2.0, "step": 4}]
    state = SimpleNamespace(log_history=history, global_step=4,
                            best_model_checkpoint="/work/.m.clsx-train/checkpoint-4")
    assert hf_trainer.best_epoch(state) == {"loss": 0.7, "mse": 0.5, "epoch": 2.0}
    # No epoch ever improved: the Trainer ends with (and clsx saves) the last step's weights.
    state.best_model_checkpoint = None
    assert hf_trainer.best_epoch(state)["epoch"] == 2.0
    state.global_step = 5  # e.g. --epochs 2.5: the final weights were never evaluated
    assert hf_trainer.best_epoch(state) == {}


@pytest.mark.parametrize("rows, extra, named", [
    ([{"text": t, "label": ["a,b", "c"] if i % 2 else ["c"]}
      for i, t in enumerate(POSITIVE)], [], "'a,b'"),
    ([{"text": t, "label": "a,b;z" if i % 2 else "z"} for i, t in enumerate(POSITIVE)],
     ["--label-separator", ";"], "'a,b'"),
])
def test_multi_label_names_with_a_separator_are_refused(rows, extra, named, tiny_bases,
                                                        tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    result = CliRunner().invoke(main, [
        "train", "--model", str(tiny_bases["bert"]), "--train", str(data), "--output",
        str(tmp_path / "model"), "--problem-type", "multi_label", *extra])
    assert result.exit_code == 1, result.output
    assert "multi-label names must not contain" in result.output and named in result.output
    assert not (tmp_path / "model").exists()


def test_train_options_default_to_the_config(tiny_bases, sentiment, tmp_path, monkeypatch):
    """Options not given leave TrainConfig's defaults, which keep the seed recipe."""
    from clsx.artifacts.manifest import Manifest
    from clsx.train.config import TrainConfig

    configs = []

    def recorded(config, log):
        """What train would return, without training: the command must then succeed."""
        configs.append(config)
        manifest = Manifest(family="bert", labels=("neg", "pos"), max_length=32,
                            problem_type="single_label_classification", pad_token_id=0)
        return trainer_module.TrainResult(config.output, manifest, {"accuracy": 1.0}, [], 90.0)

    monkeypatch.setattr(trainer_module, "train", recorded)
    required = ["train", "--model", "m", "--train", str(sentiment), "--output",
                str(tmp_path / "out")]
    for extra in ([], ["--epochs", "1", "--problem-type", "regression", "--long-text",
                       "window", "--chat"]):
        result = CliRunner().invoke(main, [*required, *extra])
        assert result.exit_code == 0, result.output
        assert result.output.endswith(f"Trained in 1.5 min; wrote {tmp_path / 'out'}\n")
    assert len(configs) == 2
    default = TrainConfig(model="m", train=str(sentiment), output=tmp_path / "out")
    assert configs[0] == default
    assert configs[1] == TrainConfig(model="m", train=str(sentiment), output=tmp_path / "out",
                                      epochs=1, problem_type="regression", long_text="window",
                                      chat=True)
    recipe = dict(text_column="text", label_column="label", label_separator=",",
                  problem_type="single_label_classification", method="lora", epochs=3.0,
                  lr=5e-5, warmup=0.1, batch_size=8, eval_batch_size=4, max_length=512,
                  long_text="truncate", aggregate="mean", lora_r=64, lora_alpha=128,
                  lora_dropout=0.1, eval_fraction=0.1, seed=42)
    assert {name: getattr(default, name) for name in recipe} == recipe
    shown = CliRunner().invoke(main, ["train", "--help"], terminal_width=300,
                               max_content_width=300).output.splitlines()
    for option, value in [("epochs", "3.0"), ("lr", "5e-05"), ("batch-size", "8"),
                          ("problem-type", "single_label"), ("long-text", "truncate"),
                          ("lora-alpha", "128"), ("seed", "42")]:
        start = next(i for i, line in enumerate(shown) if line.startswith(f"  --{option} "))
        entry = [shown[start]] + list(itertools.takewhile(
            lambda line: not line.startswith("  -"), shown[start + 1:]))
        assert entry[-1].endswith(f"[default: {value}]"), entry
