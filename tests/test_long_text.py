"""``--long-text truncate|head-tail|window`` and ``--aggregate``: cutting, combining, and the
same answers through train, eval, batch-predict and every backend."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from clsx.artifacts.long_text import AGGREGATES, LongText
from clsx.artifacts.manifest import Manifest
from clsx.errors import ClsxError
from clsx.inference.decisions import probabilities
from clsx.inference.windows import combine
from clsx.testing.tiny_models import FAMILIES
from tests.conftest import (
    FakeRun,
    predict,
    predict_on_fake,
    run_clsx,
    templated_copy,
    write_parquet,
)
from tests.test_train import train, write_jsonl

LONG = " ".join(f"word{i % 37} and more" for i in range(200))
TEXTS = ["short text", LONG, None, "", "medium " * 20]


def test_head_tail_keeps_a_quarter_of_head_and_the_tail():
    tokens = list(range(100))
    (kept,) = LongText("head-tail").cut(tokens, 20)
    assert kept == list(range(5)) + list(range(85, 100))
    assert LongText("head-tail").cut(tokens[:20], 20) == [tokens[:20]]


@pytest.mark.parametrize("stride", [None, 1, 7, 20])
def test_windows_cover_every_token_and_end_at_the_end(stride):
    tokens = list(range(103))
    windows = LongText("window", stride).cut(tokens, 20)
    assert all(len(w) == 20 for w in windows)
    assert windows[0][0] == 0 and windows[-1][-1] == 102
    assert sorted({t for w in windows for t in w}) == tokens
    if stride:
        assert windows[1][0] == stride


def test_a_stride_longer_than_a_window_is_refused():
    with pytest.raises(ClsxError, match="longer than a window"):
        LongText("window", 30).cut(list(range(100)), 20)
    with pytest.raises(ClsxError, match="--long-text must be one of"):
        LongText("middle")


def test_combine_per_text():
    logits = np.array([[1, 0], [3, 0], [0, 2], [np.nan, np.nan], [5, 1]], np.float32)
    counts = np.array([3, 1, 1])
    mean = combine(logits, counts, "mean", "single_label_classification")
    np.testing.assert_allclose(mean[0], [4 / 3, 2 / 3])
    np.testing.assert_allclose(combine(logits, counts, "max", "regression")[0], [3, 2])
    vote = probabilities(combine(logits, counts, "vote", "single_label_classification"),
                         "single_label_classification")
    np.testing.assert_allclose(vote[0], [2 / 3, 1 / 3], atol=1e-5)
    multi = probabilities(combine(logits, counts, "vote", "multi_label_classification"),
                          "multi_label_classification")
    np.testing.assert_allclose(multi[0], [2 / 3, 1 / 3], atol=1e-5)
    for how in ("mean", "max", "vote"):
        combined = combine(logits, counts, how, "single_label_classification")
        assert np.isnan(combined[1]).all() and not np.isnan(combined[[0, 2]]).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_windows_keep_the_template_and_short_texts_encode_as_truncate(family, tiny_models,
                                                                      tmp_path, fake_runner):
    model = templated_copy(tiny_models[family], tmp_path / "m", "Review: {text} Answer:")

    def run(texts: list[str | None], *options: object) -> FakeRun:
        return predict_on_fake(fake_runner, tmp_path, model, texts, "--max-length", 32,
                               "--windows-column", *options)

    window = run(TEXTS, "--long-text", "window")
    assert window.table.column("id").to_pylist() == [0, 1, 2, 3, 4]
    windows = window.table.column("windows").to_pylist()
    assert windows[1] > 3 and [windows[i] for i in (0, 2, 3)] == [1, 0, 1]
    assert len(window.rows) == sum(windows)
    (full,) = run([TEXTS[1]]).rows  # truncated
    (prefix,) = run([""]).rows
    for piece in window.rows:  # every model input: the long text's windows, the short texts
        assert len(piece) <= 32 and piece[:3] == full[:3]
        assert piece[-2:] == prefix[-2:]  # the template's end (and [SEP]) in every window
    short = [TEXTS[0], TEXTS[3], "medium " * 3]
    assert run(short, "--long-text", "window").rows == run(short).rows
    head_tail = run(TEXTS, "--long-text", "head-tail")
    assert "1 null texts, 2 truncated" in head_tail.result.output
    assert head_tail.table.column("windows").to_pylist() == [1, 1, 0, 1, 1]


def combined_probabilities(logits: np.ndarray, aggregate: str) -> np.ndarray:
    """What one text's probabilities must be, from its windows' logits (rows): the softmax of
    their mean or maximum, or each label's share of the windows' votes."""
    if aggregate == "vote":
        return np.bincount(logits.argmax(axis=1), minlength=logits.shape[1]) / len(logits)
    combined = logits.mean(axis=0) if aggregate == "mean" else logits.max(axis=0)
    exp = np.exp(combined - combined.max())
    return exp / exp.sum()


@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_a_long_text_gets_its_windows_combined_by_the_aggregate(aggregate, tiny_models,
                                                                tmp_path, fake_runner):
    run = predict_on_fake(fake_runner, tmp_path, tiny_models["qwen2"], [LONG, None],
                          "--max-length", 16, "--long-text", "window", "--window-stride", 8,
                          "--aggregate", aggregate, "--windows-column")
    assert run.result.exit_code == 0, run.result.output
    assert run.table.column("windows").to_pylist() == [len(run.rows), 0]
    assert len(run.rows) > 3 and all(len(piece) <= 16 for piece in run.rows)
    expected = combined_probabilities(run.runner.logits(run.rows), aggregate)
    long_row, null_row = run.table.to_pylist()
    np.testing.assert_allclose(long_row["probs"], expected, atol=2e-6)
    assert long_row["label"] == ("negative", "neutral", "positive")[int(expected.argmax())]
    assert null_row["label"] is None and null_row["probs"] is None


def test_torch_and_onnx_agree_on_windows(tiny_models, tiny_exports, tmp_path):
    source = write_parquet(tmp_path / "in.parquet", TEXTS)
    tables = {}
    for backend, model in (("torch", tiny_models["qwen2"]), ("onnx", tiny_exports["qwen2"])):
        out = tmp_path / f"{backend}.parquet"
        # --backend torch: fp32, whatever --backend auto would pick on this CPU.
        result = predict(source, out, "-m", model, "--backend", backend, "--max-length", "16",
                         "--long-text", "window", "--window-stride", "8", "--windows-column")
        assert result.exit_code == 0, result.output
        tables[backend] = pq.read_table(out)
    torch_out, onnx_out = tables["torch"], tables["onnx"]
    assert torch_out.column("windows").to_pylist()[1] > 3
    assert onnx_out.column("windows").equals(torch_out.column("windows"))
    assert onnx_out.column("label").equals(torch_out.column("label"))
    present = [i for i, text in enumerate(TEXTS) if text is not None]
    probs = {name: np.array([table.column("probs").to_pylist()[i] for i in present])
             for name, table in tables.items()}
    np.testing.assert_allclose(probs["onnx"], probs["torch"], atol=1e-4)


def test_training_on_windows_records_the_setting_and_eval_uses_it(tiny_bases, tmp_path,
                                                                   fake_runner):
    rows = [{"text": f"{word} " * 60 + "end", "label": label}
            for word, label in [("good", "pos"), ("bad", "neg")] * 4]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "model"
    result = train("--model", tiny_bases["bert"], "--train", data, "--eval", data,
                   "--output", out, "--long-text", "window", "--aggregate", "max",
                   "--lora-r", "4", "--lora-alpha", "8", "--no-calibration")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "clsx.json").read_text())
    assert manifest["long_text"] == {"strategy": "window", "stride": None, "aggregate": "max"}
    assert Manifest.load(out).long_text == LongText("window", None, "max")
    # Training is real (it does not go through the runner registry); prediction and eval
    # run on the fake, whose logits per window are known: the stored setting must give the
    # maximum over the text's windows, with no option given.
    alone = predict_on_fake(fake_runner, tmp_path, out, [rows[0]["text"]], "--windows-column")
    assert alone.table.column("windows").to_pylist() == [len(alone.rows)]
    assert len(alone.rows) > 1
    expected = combined_probabilities(alone.runner.logits(alone.rows), "max")
    np.testing.assert_allclose(alone.table.column("probs").to_pylist()[0], expected, atol=2e-6)
    predictions = tmp_path / "predictions.parquet"
    evaluated = run_clsx("eval", "-m", out, "--data", data, "--predictions", predictions)
    assert evaluated.exit_code == 0, evaluated.output
    table = pq.read_table(predictions)
    assert table.num_rows == len(rows)  # one prediction per text, not per window
    np.testing.assert_allclose(table.column("predicted_probs").to_pylist()[0], expected,
                               atol=2e-6)


def test_a_manifest_without_long_text_truncates(tiny_models, tmp_path):
    data = json.loads((tiny_models["bert"] / "clsx.json").read_text())
    data.pop("long_text", None)
    (tmp_path / "clsx.json").write_text(json.dumps(data))
    assert Manifest.load(tmp_path).long_text == LongText()
