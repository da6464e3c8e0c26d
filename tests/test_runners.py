"""Every registered backend reproduces the PyTorch fp32 reference, row by row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clsx.artifact import open_artifact
from clsx.errors import ClsxError
from clsx.pipeline import Pipeline
from clsx.runners import RUNNERS, backend_for, runner_class
from clsx.testing import FAMILIES
from tests.conftest import TEXTS

# Where a backend needs an export, the fixture that holds it.
RUNNER_ARTIFACTS = {"torch": "tiny_models", "onnx": "tiny_exports"}
TOLERANCE = 1e-4


def reference_logits(model_dir, texts, max_length) -> np.ndarray:
    """Plain transformers, one unpadded text at a time: no clsx code involved."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            inputs = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**inputs).logits[0].numpy())
    return np.stack(rows)


def test_every_registered_runner_has_a_parity_test():
    assert set(RUNNERS) == set(RUNNER_ARTIFACTS)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backend", sorted(RUNNERS))
def test_runner_matches_unpadded_transformers(backend, family, request, tiny_models):
    model_dir = request.getfixturevalue(RUNNER_ARTIFACTS[backend])[family]
    pipeline = Pipeline.open(model_dir, backend, batch_tokens=256)
    manifest = pipeline.artifact.manifest
    # Texts that tokenise to nothing are classified by clsx but cannot be fed to HF alone.
    texts = [t for t in TEXTS if pipeline.artifact.tokenizer(t)["input_ids"]] * 3
    expected = reference_logits(tiny_models[family], texts, manifest.max_length)
    logits = pipeline.classify(texts, window_rows=7)
    np.testing.assert_allclose(logits, expected, atol=TOLERANCE, rtol=0)
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ClsxError, match="known backends: torch, onnx"):
        runner_class("tensorflow")


def test_backend_must_match_the_artifact_format(tiny_models, tiny_exports):
    with pytest.raises(ClsxError, match="export it first"):
        backend_for(open_artifact(tiny_models["bert"]), "onnx")
    with pytest.raises(ClsxError, match="torch backend cannot run"):
        backend_for(open_artifact(tiny_exports["bert"]), "torch")
    assert backend_for(open_artifact(tiny_exports["bert"]), "auto") == "onnx"
