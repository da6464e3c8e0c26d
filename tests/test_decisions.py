"""The decision rule users get, and agreement measured on it by every gate."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clsx.artifacts.manifest import Manifest
from clsx.inference.decisions import DecisionRule
from clsx.quality.parity import compare

LABELS = ("joy", "anger", "fear")


def multi_label(thresholds: tuple[float, ...] | None = None) -> Manifest:
    return Manifest(family="bert", labels=LABELS, problem_type="multi_label_classification",
                    max_length=16, pad_token_id=0, thresholds=thresholds)


def logits_for(probs: list[list[float]]) -> np.ndarray:
    p = np.array(probs, dtype=np.float32)
    return np.log(p / (1 - p))


def test_a_gate_fails_when_labels_move_only_between_the_tuned_threshold_and_one_half():
    rule = DecisionRule.of(multi_label((0.3, 0.3, 0.3)))
    reference = logits_for([[0.45, 0.1, 0.1], [0.4, 0.35, 0.1]])
    moved = logits_for([[0.25, 0.1, 0.1], [0.4, 0.2, 0.1]])  # never crosses 0.5
    at_one_half = compare(reference, moved, DecisionRule.of(multi_label()))
    assert at_one_half.label_agreement == 1.0  # what the old rule (logits > 0) measured
    report = compare(reference, moved, rule)
    assert report.label_agreement == 0.0 and report.per_label_agreement == 4 / 6


def test_multi_label_columns_list_the_labels_at_their_thresholds():
    rule = DecisionRule.of(multi_label((0.3, 0.6, 0.5)))
    logits = np.vstack([logits_for([[0.35, 0.55, 0.7]]), np.full((1, 3), np.nan)])
    columns = rule.named_columns(logits)
    assert [f.name for f in rule.fields()] == ["label", "labels", "score", "probs"]
    assert columns["labels"].to_pylist() == [["joy", "fear"], None]
    assert columns["label"].to_pylist() == ["joy,fear", None]
    assert columns["labels"].type == pa.list_(pa.string())
    one = DecisionRule.of(multi_label((0.3, 0.6, 0.5)), threshold=0.5)
    assert one.named_columns(logits)["labels"].to_pylist()[0] == ["anger", "fear"]


def test_single_label_agreement_is_on_the_argmax_and_skips_null_rows():
    manifest = Manifest(family="bert", labels=LABELS, problem_type="single_label_classification",
                        max_length=16, pad_token_id=0)
    rule = DecisionRule.of(manifest)
    reference = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [np.nan] * 3], dtype=np.float32)
    other = np.array([[0.9, 0.0, 0.0], [0.0, 0.0, 2.0], [np.nan] * 3], dtype=np.float32)
    report = compare(reference, other, rule)
    assert report.rows == 2 and report.label_agreement == 0.5
    assert report.per_label_agreement is None
    assert [f.name for f in rule.fields()] == ["label", "score", "probs"]
