"""The clsx.json manifest: round trip, validation that quotes the bad value, derivation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from clsx.artifacts.artifact import fingerprint, open_artifact
from clsx.artifacts.manifest import MANIFEST_NAME, Manifest
from clsx.errors import ClsxError

BASE = dict(family="qwen2", labels=("a", "b"), problem_type="single_label_classification",
            max_length=32, pad_token_id=0)


def test_round_trip(tmp_path):
    manifest = Manifest(**BASE, template="Review: {text}", thresholds=(0.3, 0.45))
    manifest.save(tmp_path)
    assert Manifest.load(tmp_path) == manifest


@pytest.mark.parametrize("change, message", [
    ({"format": "pickle"}, "format 'pickle'"),
    ({"problem_type": "ranking"}, "problem_type 'ranking'"),
    ({"labels": ()}, "no labels"),
    ({"max_length": 0}, "max_length must be >= 1, got 0"),
    ({"template": "no placeholder"}, "no {text} placeholder"),
    ({"pad_token_id": None}, "needs a pad token"),
    ({"thresholds": (0.5,)}, "one value in (0, 1) per label (2), got [0.5]"),
    ({"thresholds": (0.5, 1.0)}, "one value in (0, 1) per label (2), got [0.5, 1.0]"),
])
def test_invalid_values_are_quoted(change, message):
    with pytest.raises(ClsxError, match=re.escape(message)):
        Manifest(**{**BASE, **change})


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "does not hold a JSON object"),
    (json.dumps({**BASE, "surprise": 1}), "unknown keys"),
    (json.dumps({"family": "bert"}), "incomplete"),
])
def test_broken_manifest_files(tmp_path, content, message):
    (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(ClsxError, match=message):
        Manifest.load(tmp_path)


def test_directory_without_manifest_gets_one_from_its_config(qwen2_copy):
    expected = open_artifact(qwen2_copy).manifest
    (qwen2_copy / MANIFEST_NAME).unlink()
    derived = open_artifact(qwen2_copy).manifest
    assert derived.labels == expected.labels
    assert derived.problem_type == expected.problem_type
    assert derived.pad_token_id == expected.pad_token_id
    assert derived.family == "qwen2" and derived.format == "torch"


def test_fingerprint_notices_a_changed_manifest(qwen2_copy):
    """Resume and stale-export checks must see new labels or thresholds, not only new weights."""
    before = fingerprint(qwen2_copy)
    manifest_path = qwen2_copy / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["template"] = "Review: {text}"
    manifest_path.write_text(json.dumps(manifest))
    assert fingerprint(qwen2_copy) != before


def test_per_label_thresholds_need_enough_positives_of_their_own():
    from clsx.quality.metrics import MIN_POSITIVES_PER_LABEL, tune_threshold, tune_thresholds

    rng = np.random.default_rng(0)
    gold = np.zeros((200, 3), int)
    gold[:100, 0] = 1  # common label, separable at a high cut-off
    gold[:2, 2] = 1  # too rare for a threshold of its own
    probs = np.column_stack([np.where(gold[:, 0], 0.9, 0.52), rng.uniform(0, 1, 200),
                             np.where(gold[:, 2], 0.2, 0.1)])
    logits = np.log(probs / (1 - probs))
    thresholds = tune_thresholds(logits, gold)
    assert 0.52 < thresholds[0] <= 0.9
    assert gold[:, 2].sum() < MIN_POSITIVES_PER_LABEL
    assert thresholds[2] == tune_threshold(logits, gold)


def test_a_tie_between_thresholds_takes_the_middle_one():
    """Rows that separate cleanly (negatives at 0.1, positives at 0.9) tie every threshold
    from 0.15 to 0.85 (0.9 in float32 is just under 0.9): the cut-off is the middle one, away
    from both edges."""
    from clsx.quality.metrics import tune_threshold, tune_thresholds

    gold = np.array([[1], [1], [0], [0], [0], [1]] * 5)
    probs = np.where(gold == 1, 0.9, 0.1)
    logits = np.log(probs / (1 - probs))
    assert tune_threshold(logits, gold) == tune_thresholds(logits, gold)[0] == 0.5
