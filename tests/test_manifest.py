"""The clsx.json manifest: round trip, validation that quotes the bad value, derivation."""

from __future__ import annotations

import json

import pytest

from clsx.artifact import open_artifact
from clsx.errors import ClsxError
from clsx.manifest import MANIFEST_NAME, Manifest

BASE = dict(family="qwen2", labels=("a", "b"), problem_type="single_label_classification",
            max_length=32, pad_token_id=0)


def test_round_trip(tmp_path):
    manifest = Manifest(**BASE, template="Review: {text}")
    manifest.save(tmp_path)
    assert Manifest.load(tmp_path) == manifest


@pytest.mark.parametrize("change, message", [
    ({"format": "pickle"}, "format 'pickle'"),
    ({"problem_type": "ranking"}, "problem_type 'ranking'"),
    ({"labels": ()}, "no labels"),
    ({"max_length": 0}, "max_length must be >= 1, got 0"),
    ({"template": "no placeholder"}, "no {text} placeholder"),
    ({"pad_token_id": None}, "needs a pad token"),
])
def test_invalid_values_are_quoted(change, message):
    with pytest.raises(ClsxError, match=message.replace("(", r"\(")):
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
