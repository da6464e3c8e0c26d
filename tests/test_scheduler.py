"""The shared scheduler: budgets, padding, order restored across windows, null rows; and the
encoder that feeds it (templates, truncation), seen from the inputs the runner receives.

The runner is the fake one (``tests/fakes.py``): a row's logits depend on its own tokens only,
so anything that batching, padding, sorting or the window size did to a row would show as a
changed row, exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clsx.artifacts.artifact import open_artifact
from clsx.inference.classifier import prefetch
from clsx.inference.runners import RunnerOptions
from clsx.inference.scheduler import pad, plan_batches, predict_window_rows
from clsx.testing.tiny_models import FAMILIES
from tests.conftest import predict_on_fake, templated_copy
from tests.fakes import FakeRunner

TEMPLATE = "Review: {text} Answer:"
# Tests that take function-scoped fixtures (tmp_path, fake_runner) across examples: each
# example works in a folder of its own, so sharing them is safe.
SHARED_FIXTURES = settings(deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture])


def window_of(rows: list[list[int] | None]) -> SimpleNamespace:
    """What :func:`predict_window_rows` reads of an encoded window: each row's token ids, None
    for a null text. (A stand-in, so that these tests do not depend on where the encoder's
    types live.)"""
    return SimpleNamespace(ids=rows)


@pytest.fixture(scope="module")
def fake(tiny_models) -> FakeRunner:
    """A fake runner on the tiny Qwen2 artifact, called directly (no command line)."""
    return FakeRunner(open_artifact(tiny_models["qwen2"]), RunnerOptions())


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


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(st.integers(0, 399), min_size=1, max_size=64)),
                min_size=1, max_size=60),
       st.integers(1, 2000), st.one_of(st.none(), st.integers(1, 50)))
@example([[3, 4], None, [1], [9, 9, 9, 9], None, [2, 2, 2]], 5, None)
def test_predict_window_rows_restores_order_and_keeps_null_rows(fake, rows, budget, max_rows):
    logits = predict_window_rows(window_of(rows), fake.predict_rows,
                                 fake.artifact.manifest.num_labels, budget, max_rows)
    assert logits.dtype == np.float32 and len(logits) == len(rows)
    for row, out in zip(rows, logits, strict=True):
        if row is None:
            assert np.isnan(out).all()
        else:  # its own logits, bit for bit, whatever it was batched and padded with
            assert out.tobytes() == fake.row_logits(row).tobytes()


def test_prefetch_reraises_producer_errors():
    def broken():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(prefetch(broken()))


@settings(SHARED_FIXTURES, max_examples=60)
@given(st.lists(st.one_of(st.none(), st.text(max_size=300)), min_size=1, max_size=40),
       st.integers(8, 400), st.integers(1, 50))
def test_random_unicode_keeps_row_count_and_order(tiny_models, tmp_path, fake_runner, texts,
                                                  budget, window_rows):
    model = tiny_models["qwen2"]
    run = predict_on_fake(fake_runner, tmp_path, model, texts, "--batch-tokens", budget,
                          "--window-rows", window_rows)
    assert run.result.exit_code == 0, run.result.output
    # Every row classified on its own, one window each: the same table, row for row.
    alone = predict_on_fake(fake_runner, tmp_path, model, texts, "--batch-tokens", 1,
                            "--window-rows", 1)
    assert run.table.equals(alone.table)
    assert run.table["id"].to_pylist() == list(range(len(texts)))
    labels = run.table["label"].to_pylist()
    assert [label is None for label in labels] == [text is None for text in texts]
    assert len(run.rows) == sum(text is not None for text in texts)
    max_length = open_artifact(model).manifest.max_length
    assert all(1 <= len(row) <= max_length for row in run.rows)


def test_encoder_counts_truncation_and_applies_template(tiny_models, tmp_path, fake_runner):
    bert = tiny_models["bert"]
    cut = predict_on_fake(fake_runner, tmp_path, bert,
                          ["short", "a much longer text that will not fit in eight tokens"],
                          "--max-length", 8)
    assert "0 null texts, 1 truncated" in cut.result.output
    assert [len(row) for row in cut.rows][0] == 8  # the longest row comes first
    templated = templated_copy(bert, tmp_path / "templated", "Review: {text}")
    assert (predict_on_fake(fake_runner, tmp_path, templated, ["good"]).rows
            == predict_on_fake(fake_runner, tmp_path, bert, ["Review: good"]).rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_cuts_the_text_and_keeps_the_template_whole(family, tiny_models, tmp_path,
                                                               fake_runner):
    model = templated_copy(tiny_models[family], tmp_path / "model", TEMPLATE)
    long, short = "the food arrived hot " * 10, "ok"
    run = predict_on_fake(fake_runner, tmp_path, model, [long, short, None], "--max-length",
                          20, "--windows-column")
    assert "1 null texts, 1 truncated" in run.result.output
    assert run.table["windows"].to_pylist() == [1, 1, 0]  # truncated: one input per text
    long_row, short_row = run.rows  # longest first
    assert len(long_row) == 20
    (empty,) = predict_on_fake(fake_runner, tmp_path, model, [""], "--max-length", 20).rows
    ending = empty[-3:]  # "Answer:" (and [SEP] for BERT)
    assert long_row[-3:] == ending and short_row[-3:] == ending
    whole = open_artifact(model).tokenizer("Review: ok Answer:")["input_ids"]
    assert short_row == whole  # a text that fits is encoded as the tokenizer does
