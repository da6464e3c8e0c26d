"""``--long-text truncate|head-tail|window`` and ``--aggregate``: cutting, combining, and the
same answers through train, eval, batch-predict and every backend."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from clsx.classifier import Classifier
from clsx.decisions import probabilities
from clsx.errors import ClsxError
from clsx.long_text import LongText, combine
from clsx.manifest import Manifest
from clsx.testing import FAMILIES
from tests.conftest import write_parquet
from tests.test_batch_predict import predict
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
                                                                      tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    for path in tiny_models[family].iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    Manifest.load(model).replace(template="Review: {text} Answer:").save(model)
    plain = Classifier.open(model, max_length=32)
    window = Classifier.open(model, max_length=32, long_text={"strategy": "window"})
    encoded = window.encoder.encode(TEXTS)
    assert encoded.pieces[1] > 3 and list(encoded.pieces[[0, 2, 3]]) == [1, 1, 1]
    assert list(encoded.inputs_per_row()[[0, 2, 3]]) == [1, 0, 1]
    full = plain.encoder.encode([TEXTS[1]]).ids[0]
    prefix = plain.encoder.encode([""]).ids[0]
    pieces = encoded.ids[1 : 1 + encoded.pieces[1]]
    for piece in pieces:
        assert len(piece) <= 32 and piece[:3] == full[:3]
        assert piece[-2:] == prefix[-2:]  # the template's end (and [SEP]) in every window
    short = [TEXTS[0], TEXTS[3], "medium " * 3]
    assert window.encoder.encode(short).ids == plain.encoder.encode(short).ids
    head_tail = Classifier.open(model, max_length=32, long_text={"strategy": "head-tail"})
    assert head_tail.encoder.encode(TEXTS).truncated == 2


def test_window_predictions_are_the_mean_of_each_windows_logits(tiny_models, tiny_exports,
                                                                tmp_path):
    source = write_parquet(tmp_path / "in.parquet", TEXTS)
    outputs = {}
    for name, model in (("torch", tiny_models["qwen2"]), ("onnx", tiny_exports["qwen2"])):
        outputs[name] = tmp_path / f"{name}.parquet"
        result = predict(source, outputs[name], "-m", model, "--max-length", "16",
                         "--long-text", "window", "--window-stride", "8", "--windows-column")
        assert result.exit_code == 0, result.output
    table = pq.read_table(outputs["torch"])
    assert table.num_rows == len(TEXTS) and table.column("id").to_pylist() == [0, 1, 2, 3, 4]
    windows = table.column("windows").to_pylist()
    assert windows[1] > 3 and windows[2] == 0 and windows[0] == 1

    pipeline = Classifier.open(tiny_models["qwen2"], max_length=16,
                               long_text={"strategy": "window", "stride": 8})
    encoded = pipeline.encoder.encode([LONG])
    each = pipeline.runner.predict_rows(encoded.ids)
    expected = probabilities(each.mean(axis=0, keepdims=True), "single_label_classification")
    np.testing.assert_allclose(table.column("probs").to_pylist()[1], expected[0], atol=1e-5)
    onnx = pq.read_table(outputs["onnx"])
    np.testing.assert_allclose(np.array(onnx.column("probs").to_pylist()[1]),
                               expected[0], atol=1e-4)
    assert onnx.column("label").equals(table.column("label"))


def test_training_on_windows_records_the_setting_and_eval_uses_it(tiny_bases, tmp_path):
    rows = [{"text": f"{word} " * 60 + "end", "label": label}
            for word, label in [("good", "pos"), ("bad", "neg")] * 4]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "model"
    result = train("--model", tiny_bases["bert"], "--train", data, "--eval", data,
                   "--output", out, "--long-text", "window", "--aggregate", "max",
                   "--lora-r", "4", "--lora-alpha", "8")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "clsx.json").read_text())
    assert manifest["long_text"] == {"strategy": "window", "stride": None, "aggregate": "max"}
    assert Manifest.load(out).long_text == LongText("window", None, "max")
    pipeline = Classifier.open(out)
    assert pipeline.encoder.encode([rows[0]["text"]]).pieces[0] > 1
    metrics = json.loads((out / "metrics.json").read_text())["epochs"][-1]
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_a_manifest_without_long_text_truncates(tiny_models, tmp_path):
    data = json.loads((tiny_models["bert"] / "clsx.json").read_text())
    data.pop("long_text", None)
    (tmp_path / "clsx.json").write_text(json.dumps(data))
    assert Manifest.load(tmp_path).long_text == LongText()
