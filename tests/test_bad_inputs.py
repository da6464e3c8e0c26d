"""Every bad input, for every command: one line naming the cause, exit 1, nothing at the target.

Each case prepares its inputs in ``tmp_path`` and returns the command line; the target
(``tmp_path / "out" / ...``) must not exist afterwards, nor its parent directory.
A second table lists inputs that look odd but must work.

The tables are about inputs, not models: they run on the fake runner (``tests/fakes.py``).
The security tests at the end load real weights, since loading them is their subject.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from clsx.artifacts.artifact import open_artifact
from clsx.cli import main
from clsx.testing.tiny_models import build_tiny_classifier
from tests.conftest import TEXTS, write_parquet


@dataclass
class Env:
    """Inputs a case can use or spoil: a classifier copy, a base model, a texts file, and
    the (shared, read-only) ONNX export of the classifier ``model`` is a copy of."""

    tmp: Path
    model: Path
    base: Path
    texts: Path
    model_export: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out" / "result.parquet"

    @property
    def out_dir(self) -> Path:
        return self.tmp / "out" / "model"

    def predict(self, source, *extra) -> list[str]:
        return ["batch-predict", source, self.out, "-m", self.model, "--quiet", *extra]

    def train(self, data, *extra) -> list[str]:
        return ["train", "--model", self.base, "--train", data, "--output", self.out_dir,
                "--eval-fraction", "0.5", "--epochs", "1", *extra]

    def eval(self, data, *extra) -> list[str]:
        return ["eval", "-m", self.model, "--data", data, "--json", self.out, *extra]

    def export(self, *extra) -> list[str]:
        return ["export", self.model, "--output", self.out_dir, *extra]


def jsonl(env: Env, rows: list[dict], name: str = "data.jsonl") -> Path:
    path = env.tmp / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def labelled(env: Env, texts: list, labels: list, name: str = "data.parquet") -> Path:
    """A Parquet file with text and label columns; labels cycle through ``labels``."""
    cycled = [labels[i % len(labels)] for i in range(len(texts))]
    pq.write_table(pa.table({"text": texts, "label": cycled}), env.tmp / name)
    return env.tmp / name


def invalid_utf8(env: Env) -> Path:
    """Parquet whose text column holds bytes that are not UTF-8 (a broken writer's output)."""
    data = b"fine" + b"caf\xed\xa0\x80"
    offsets = pa.py_buffer(np.array([0, 4, len(data)], dtype=np.int32).tobytes())
    text = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(data)])
    path = env.tmp / "utf8.parquet"
    pq.write_table(pa.table({"text": text, "label": ["negative", "positive"]}), path)
    return path


def cut_in_half(path: Path, target: Path) -> Path:
    data = path.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def retrained_export(env: Env) -> Path:
    """An export of ``env.model`` whose parent is then retrained.

    The session's real export of the same tiny model, copied and pointed at ``env.model``
    (the fingerprint it recorded is of identical content), instead of exporting again.
    """
    export = Path(shutil.copytree(env.model_export, env.tmp / "export"))
    edit_json(export / "clsx.json", parent=os.path.relpath(env.model, export))
    open_artifact(export)  # valid before the retraining: the refusal below is its effect
    build_tiny_classifier(env.model, "qwen2", seed=1)
    return export


def no_tokenizer(env: Env) -> Path:
    for path in env.model.glob("tokenizer*"):
        path.unlink()
    return env.model


SENTIMENT = ["good", "bad", "fine", "awful"] * 3
LABELS = ["positive", "negative"]

# name -> (command line from env, expected words in the one-line error)
BAD = {
    # batch-predict: the input
    "predict: missing text column": (lambda e: e.predict(e.texts, "--text-column", "body"),
                                     "has no column 'body'; its columns are id, text"),
    "predict: int text column": (
        lambda e: e.predict(write_parquet(e.tmp / "i.parquet", ["a"], n=[1]), "--text-column",
                            "n"), "holds int64, not text"),
    "predict: list text column": (
        lambda e: e.predict(write_parquet(e.tmp / "l.parquet", ["a"], n=[["x"]]),
                            "--text-column", "n"), "not text"),
    "predict: zero-row file": (
        lambda e: e.predict(write_parquet(e.tmp / "z.parquet", pa.array([], pa.string()))),
        "has 0 rows"),
    "predict: parquet cut in half": (
        lambda e: e.predict(cut_in_half(e.texts, e.tmp / "cut.parquet")),
        "not a readable Parquet file"),
    "predict: not parquet": (
        lambda e: e.predict((e.tmp / "x.parquet").write_text("a,b\n") and e.tmp / "x.parquet"),
        "not a readable Parquet file"),
    "predict: glob matches nothing": (lambda e: e.predict(e.tmp / "nothing-*.parquet"),
                                      "matches no file"),
    "predict: empty directory": (lambda e: e.predict((e.tmp / "d").mkdir() or e.tmp / "d"),
                                 "holds no *.parquet files"),
    "predict: invalid UTF-8 text": (lambda e: e.predict(invalid_utf8(e), "--output-prefix", "p_"),
                                    "not valid UTF-8 (row 1"),
    "predict: label column clash": (
        lambda e: e.predict(write_parquet(e.tmp / "c.parquet", ["a"], label=["x"])),
        "--output-prefix"),
    "predict: keep unknown column": (lambda e: e.predict(e.texts, "--keep-columns", "id,nope"),
                                     "has no column 'nope'"),
    "predict: OUT inside the input directory": (
        lambda e: ["batch-predict", e.tmp, e.tmp / "out" / "r.parquet", "-m", e.model],
        "inside the input directory"),
    "predict: OUT matches the input glob": (
        lambda e: ["batch-predict", e.tmp / "*.parquet", e.tmp / "out.parquet", "-m", e.model],
        "matches the input pattern"),
    "predict: window stride longer than a window": (
        lambda e: e.predict(e.texts, "--long-text", "window", "--window-stride", "100000"),
        "longer than a window"),
    # batch-predict: the model directory
    "predict: model without config": (
        lambda e: (e.model / "config.json").unlink() or e.predict(e.texts), "has no config.json"),
    "predict: model without tokenizer": (lambda e: no_tokenizer(e) and e.predict(e.texts),
                                         "has no tokenizer"),
    "predict: mismatched num_labels": (
        lambda e: edit_json(e.model / "clsx.json", labels=["a", "b"]) or e.predict(e.texts),
        "lists 2 labels but config.json has num_labels=3"),
    "predict: pickle weights only": (
        lambda e: (e.model / "model.safetensors").rename(e.model / "pytorch_model.bin")
        and e.predict(e.texts), "pass --allow-pickle"),
    "predict: not a classifier": (
        lambda e: edit_json(e.model / "config.json", architectures=["Qwen2ForCausalLM"])
        or e.predict(e.texts), "not a classifier checkpoint"),
    "predict: unsupported family": (
        lambda e: edit_json(e.model / "config.json", model_type="gpt2") or e.predict(e.texts),
        "model_type 'gpt2' is not supported"),
    "predict: onnx backend on a torch model": (lambda e: e.predict(e.texts, "--backend", "onnx"),
                                               "export it first"),
    "predict: export whose parent was retrained": (
        lambda e: ["batch-predict", e.texts, e.out, "-m", retrained_export(e)],
        "has changed since (retrained?)"),
    "predict: manifest parent outside as an absolute path": (
        lambda e: edit_json(e.model / "clsx.json", parent="/etc") or e.predict(e.texts),
        "must be a path relative to the model directory"),
    # train
    "train: missing label column": (lambda e: e.train(jsonl(e, [{"text": "x", "y": "a"}] * 4)),
                                    "has no column 'label'"),
    "train: one class only": (lambda e: e.train(labelled(e, SENTIMENT, ["a"])),
                              "only one class"),
    "train: NaN regression target": (
        lambda e: e.train(labelled(e, SENTIMENT, [1.0, float("nan")]), "--problem-type",
                          "regression"), "NaN or null"),
    "train: null text": (lambda e: e.train(labelled(e, [*SENTIMENT, None], LABELS)),
                         "rows have a null 'text'"),
    "train: whitespace-only text": (lambda e: e.train(labelled(e, [*SENTIMENT, "  "], LABELS)),
                                    "empty or whitespace-only 'text'"),
    "train: invalid surrogate in JSON": (
        lambda e: e.train((e.tmp / "s.jsonl").write_text('{"text": "a \\ud800", "label": "x"}\n')
                          and e.tmp / "s.jsonl"), "surrogate"),
    "train: zero-row file": (lambda e: e.train(labelled(e, [], LABELS)), "has 0 rows"),
    "train: int text column": (lambda e: e.train(labelled(e, [1, 2, 3, 4], LABELS)),
                               "holds int64, not text"),
    "train: warmup of a whole run": (
        lambda e: e.train(labelled(e, SENTIMENT, LABELS), "--warmup", "1.5"),
        "--warmup must be in [0, 1)"),
    "train: unknown file type": (
        lambda e: e.train((e.tmp / "d.txt").write_text("x") and e.tmp / "d.txt"), ".txt"),
    "train: template without text": (
        lambda e: e.train(labelled(e, SENTIMENT, LABELS), "--template", "Review:"),
        "no {text} placeholder"),
    "train: chat without a chat template": (
        lambda e: e.train(labelled(e, SENTIMENT, LABELS), "--chat"),
        "needs a tokenizer with a chat template"),
    "train: unknown base model": (
        lambda e: e.train(labelled(e, SENTIMENT, LABELS), "--model", "./nowhere"),
        "neither a model directory nor a bundled alias"),
    # eval
    "eval: labels unknown to the model": (
        lambda e: e.eval(labelled(e, SENTIMENT, ["negative", "meh"])),
        "labels the model does not know: 'meh'"),
    "eval: NaN targets": (lambda e: e.eval(labelled(e, SENTIMENT, [0.0, float("nan")])),
                          "NaN or null"),
    "eval: parquet cut in half": (
        lambda e: e.eval(cut_in_half(labelled(e, SENTIMENT, LABELS), e.tmp / "cut.parquet")),
        "cannot read"),
    "eval: model without config": (
        lambda e: (e.model / "config.json").unlink() or e.eval(labelled(e, SENTIMENT, LABELS)),
        "has no config.json"),
    # export
    "export: model without tokenizer": (lambda e: no_tokenizer(e) and e.export(),
                                        "has no tokenizer"),
    "export: an export whose parent was retrained": (
        lambda e: ["export", retrained_export(e), "--output", e.out_dir],
        "has changed since (retrained?)"),
    "export: calibration data without the text column": (
        lambda e: e.export("--format", "onnx-int8", "--calibration-data",
                           labelled(e, SENTIMENT, LABELS), "--text-column", "body"),
        "has no column 'body'"),
    # options that would do nothing without another one
    "export: --text-column without calibration data": (
        lambda e: e.export("--text-column", "body"),
        "--text-column applies with --calibration-data only"),
    "export: --calibration-rows without calibration data": (
        lambda e: e.export("--format", "onnx-int8", "--calibration-rows", "10"),
        "--calibration-rows applies with --calibration-data only"),
    "export: --storage-option without calibration data": (
        lambda e: e.export("--storage-option", "region=eu-west-1"),
        "--storage-option applies with --calibration-data only"),
    "export: --dtype of an onnx export": (lambda e: e.export("--dtype", "fp32"),
                                          "--dtype applies to --format vllm only"),
    "export: --min-agreement of an fp32 export": (
        lambda e: e.export("--min-agreement", "0.5"),
        "--min-agreement applies to --format onnx-int8 and openvino-int8 only"),
    "export: --tolerance with --no-parity": (
        lambda e: e.export("--format", "vllm", "--no-parity", "--tolerance", "0.1"),
        "--tolerance does nothing with --no-parity"),
    "eval: --threshold with --tune-threshold": (
        lambda e: e.eval(labelled(e, SENTIMENT, LABELS), "--threshold", "0.3",
                         "--tune-threshold"), "does nothing with --tune-threshold"),
    "calibrate: --overwrite without --output": (
        lambda e: ["calibrate", "-m", e.model, "--data", labelled(e, SENTIMENT, LABELS),
                   "--overwrite"], "--overwrite applies with --output only"),
    "train: --eval-fraction with --eval": (
        lambda e: e.train(labelled(e, SENTIMENT, LABELS), "--eval",
                          labelled(e, SENTIMENT, LABELS, "eval.parquet")),
        "--eval-fraction applies without --eval only"),
    "train: LoRA rank of a full fine-tune": (
        lambda e: e.train(labelled(e, SENTIMENT, LABELS), "--method", "full", "--lora-r", "4"),
        "--lora-r applies to --method lora only"),
    "train: --aggregate without windows": (
        lambda e: e.train(labelled(e, SENTIMENT, LABELS), "--aggregate", "max"),
        "--aggregate applies with --long-text window only"),
    "distill: --eval-fraction with --eval": (
        lambda e: ["distill", "--teacher", e.model, "--student", e.base, "--data", e.texts,
                   "--eval", labelled(e, SENTIMENT, LABELS), "--output", e.out_dir,
                   "--eval-fraction", "0.2"], "--eval-fraction applies without --eval only"),
    # output paths, checked before any work (a file stands where a directory is needed, a
    # directory where a file is, an output that exists)
    "predict: OUT under a file": (
        lambda e: ["batch-predict", e.texts, e.texts / "out.parquet", "-m", e.model, "-q"],
        "in.parquet is a file, not a directory"),
    "eval: --json is a directory": (
        lambda e: e.eval(labelled(e, SENTIMENT, LABELS), "--json", e.tmp),
        "--json path"),
    "eval: --errors under a file": (
        lambda e: e.eval(labelled(e, SENTIMENT, LABELS), "--errors", e.texts / "e.parquet"),
        "cannot write the --errors"),
    "eval: --predictions under a file": (
        lambda e: e.eval(labelled(e, SENTIMENT, LABELS), "--predictions",
                         e.texts / "p.parquet"), "cannot write the --predictions"),
    "eval: report in a missing directory": (
        lambda e: e.eval(labelled(e, SENTIMENT, LABELS), "--report",
                         e.tmp / "missing" / "r.html"), "does not exist; create it first"),
    "bench: --json under a file": (
        lambda e: ["bench", "-m", e.model, "--data", e.texts, "--json", e.texts / "b.json"],
        "cannot write the --json"),
    "bench: --report is a directory": (
        lambda e: ["bench", "-m", e.model, "--data", e.texts, "--report", e.tmp],
        "report path"),
    "bench: --exports-dir without an export": (
        lambda e: ["bench", "-m", e.model, "--data", e.texts, "--backends", "torch",
                   "--exports-dir", e.tmp / "exports"], "--exports-dir does nothing"),
    "export: OUT exists": (lambda e: ["export", e.model, "--output", e.tmp],
                           "exists; pass --overwrite to replace it"),
    "export: OUT under a file": (lambda e: ["export", e.model, "--output", e.texts / "m"],
                                 "is a file, not a directory"),
    "train: --output under a file": (
        lambda e: e.train(labelled(e, SENTIMENT, LABELS), "--output", e.texts / "m"),
        "is a file, not a directory"),
    "calibrate: --output exists": (
        lambda e: ["calibrate", "-m", e.model, "--data", labelled(e, SENTIMENT, LABELS),
                   "--output", e.tmp], "exists; pass --overwrite to replace it"),
}


# Refusals that need the model open (the encoder meets the stride; the reader meets the bad
# bytes): every other predict case is refused before a model loads.
REFUSED_WHILE_RUNNING = {"predict: window stride longer than a window",
                         "predict: invalid UTF-8 text"}


@pytest.fixture
def env(tiny_models, tiny_bases, tiny_exports, tmp_path) -> Env:
    model = Path(shutil.copytree(tiny_models["qwen2"], tmp_path / "model"))
    texts = write_parquet(tmp_path / "in.parquet", TEXTS)
    return Env(tmp_path, model, tiny_bases["bert"], texts, tiny_exports["qwen2"])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_one_line_and_no_artifact(case, env, fake_runner):
    make, expected = BAD[case]
    args = [str(a) for a in make(env)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.output.strip().endswith(errors[0]), result.output
    assert expected in errors[0]
    assert not (env.tmp / "out").exists()
    if case.startswith(("predict:", "eval:", "bench:", "calibrate:", "export:")):
        # inputs and outputs are all checked before any work starts
        assert bool(fake_runner.opened) == (case in REFUSED_WHILE_RUNNING)


# name -> (command line from env, check on the output table)
HANDLED = {
    "dictionary-encoded text": (
        lambda e: e.predict(_dictionary_encoded(e)), lambda t: t.num_rows == 4),
    "null, empty, whitespace, control-character and 1 MB texts": (
        lambda e: e.predict(write_parquet(e.tmp / "odd.parquet",
                                          [None, "", "   ", "bell \x07 tab\t", "word " * 200_000])),
        lambda t: t.column("label").to_pylist()[0] is None
        and all(t.column("label").to_pylist()[1:])),
}


def _dictionary_encoded(env: Env) -> Path:
    path = env.tmp / "dict.parquet"
    texts = pa.array(["good", "bad", "good", "fine"]).dictionary_encode()
    pq.write_table(pa.table({"text": texts}), path)
    return path


@pytest.mark.parametrize("case", sorted(HANDLED))
def test_odd_but_valid_input_works(case, env, fake_runner):
    make, check = HANDLED[case]
    result = CliRunner().invoke(main, [str(a) for a in make(env)])
    assert result.exit_code == 0, result.output
    assert check(pq.read_table(env.out))


def test_training_on_dictionary_encoded_text_works(env):
    texts = pa.array(SENTIMENT).dictionary_encode()
    path = env.tmp / "dict-train.parquet"
    pq.write_table(pa.table({"text": texts, "label": LABELS * 6}), path)
    result = CliRunner().invoke(main, [str(a) for a in env.train(path, "--max-length", "16")])
    assert result.exit_code == 0, result.output


# --- security defaults ---------------------------------------------------------------------

def test_pickle_weights_load_only_with_allow_pickle(env):
    import torch
    from safetensors.torch import load_file

    reference = env.tmp / "reference.parquet"
    args = ["batch-predict", str(env.texts), str(reference), "-m", str(env.model), "-q"]
    assert CliRunner().invoke(main, args).exit_code == 0
    weights = env.model / "model.safetensors"
    torch.save(load_file(weights), env.model / "pytorch_model.bin")
    weights.unlink()
    refused = CliRunner().invoke(main, [str(a) for a in env.predict(env.texts)])
    assert refused.exit_code == 1 and "--allow-pickle" in refused.output
    allowed = CliRunner().invoke(main, [str(a) for a in env.predict(env.texts, "--allow-pickle")])
    assert allowed.exit_code == 0, allowed.output
    assert "backend torch (" in allowed.output  # the real weights ran, not the fake
    assert pq.read_table(env.out).equals(pq.read_table(reference))


def test_code_in_a_model_directory_is_never_run(env):
    sentinel = env.tmp / "code-ran"
    (env.model / "custom.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    names = ("AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification")
    edit_json(env.model / "config.json", auto_map={name: f"custom.{name}" for name in names})
    result = CliRunner().invoke(main, [str(a) for a in env.predict(env.texts)])
    assert result.exit_code == 0, result.output
    assert not sentinel.exists()
