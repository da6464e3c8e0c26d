"""The shared scheduler: budgets, padding, order restored across windows, null rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clsx.artifact import open_artifact
from clsx.classifier import prefetch
from clsx.encoding import EncodedWindow, TextEncoder
from clsx.scheduler import pad, plan_batches, predict_window_rows
from clsx.testing import FAMILIES


def row_signature(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """A fake backend: each row's logits are (sum of its real ids, its length)."""
    sums = (input_ids * attention_mask).sum(axis=1)
    return np.stack([sums, attention_mask.sum(axis=1)], axis=1).astype(np.float32)


def predict_window(window: EncodedWindow, predict, num_labels: int, pad_id: int,
                   batch_tokens: int) -> np.ndarray:
    """The scheduler driving a backend that takes padded batches."""
    return predict_window_rows(window, lambda rows: predict(*pad(rows, pad_id)), num_labels,
                               batch_tokens)


@given(st.lists(st.integers(1, 300), min_size=1, max_size=200), st.integers(1, 2000),
       st.one_of(st.none(), st.integers(1, 50)))
def test_batches_cover_every_row_once_within_budget(lengths, budget, max_rows):
    lengths = np.array(lengths)
    batches = plan_batches(lengths, budget, max_rows)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= budget
        assert max_rows is None or len(batch) <= max_rows


def test_pad_right_pads_with_the_pad_id():
    ids, mask = pad([[5, 6, 7], [8]], pad_token_id=2)
    assert ids.tolist() == [[5, 6, 7], [8, 2, 2]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == np.int64 and mask.dtype == np.int64


def test_predict_window_restores_order_and_keeps_null_rows():
    rows = [[3, 4], None, [1], [9, 9, 9, 9], None, [2, 2, 2]]
    logits = predict_window(EncodedWindow(rows, 0), row_signature, 2, 0, batch_tokens=5)
    for row, out in zip(rows, logits, strict=True):
        if row is None:
            assert np.isnan(out).all()
        else:
            assert out.tolist() == [sum(row), len(row)]


def test_prefetch_reraises_producer_errors():
    def broken():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(prefetch(broken()))


@pytest.fixture(scope="module")
def qwen2_encoder(tiny_models):
    artifact = open_artifact(tiny_models["qwen2"])
    return TextEncoder(artifact.tokenizer, artifact.manifest)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(st.none(), st.text(max_size=300)), max_size=40), st.integers(8, 400))
def test_random_unicode_keeps_row_count_and_order(qwen2_encoder, texts, budget):
    window = qwen2_encoder.encode(texts)
    assert len(window.ids) == len(texts)
    logits = predict_window(window, row_signature, 2, 0, budget)
    for text, ids, out in zip(texts, window.ids, logits, strict=True):
        if text is None:
            assert ids is None and np.isnan(out).all()
        else:
            assert 1 <= len(ids) <= qwen2_encoder.max_length
            assert out.tolist() == [sum(ids), len(ids)]


def test_encoder_counts_truncation_and_applies_template(tiny_models):
    artifact = open_artifact(tiny_models["bert"])
    encoder = TextEncoder(artifact.tokenizer, artifact.manifest, max_length=8)
    window = encoder.encode(["short", "a much longer text that will not fit in eight tokens"])
    assert window.truncated == 1 and len(window.ids[1]) == 8
    plain = TextEncoder(artifact.tokenizer, artifact.manifest)
    with_template = artifact.manifest.replace(template="Review: {text}")
    templated = TextEncoder(artifact.tokenizer, with_template)
    assert templated.encode(["good"]).ids[0] == plain.encode(["Review: good"]).ids[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_cuts_the_text_and_keeps_the_template_whole(tiny_models, family):
    artifact = open_artifact(tiny_models[family])
    manifest = artifact.manifest.replace(template="Review: {text} Answer:")
    encoder = TextEncoder(artifact.tokenizer, manifest, max_length=20)
    long, short = "the food arrived hot " * 10, "ok"
    window = encoder.encode([long, short, None])
    assert window.truncated == 1 and window.pieces is None and window.ids[2] is None
    assert len(window.ids[0]) == 20
    ending = encoder.encode([""]).ids[0][-3:]  # "Answer:" (and [SEP] for BERT)
    assert window.ids[0][-3:] == ending and window.ids[1][-3:] == ending
    whole = artifact.tokenizer("Review: ok Answer:")["input_ids"]
    assert window.ids[1] == whole  # a text that fits is encoded as the tokenizer does
