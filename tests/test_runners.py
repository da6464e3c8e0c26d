"""Every registered backend reproduces the PyTorch fp32 reference, row by row."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clsx.artifacts.artifact import open_artifact
from clsx.errors import ClsxError
from clsx.inference.classifier import Classifier
from clsx.inference.runners import RUNNERS, RunnerOptions, backend_for, runner_class
from clsx.testing.tiny_models import FAMILIES
from tests.conftest import TEXTS

# Where a backend needs an export, the fixture that holds it.
RUNNER_ARTIFACTS = {"torch": "tiny_models", "onnx": "tiny_exports", "openvino": "tiny_openvino"}
# Backends whose parity tests live in their own module (each engine start costs ~25 s).
PARITY_ELSEWHERE = {"vllm": "tests/test_vllm.py", "tensorrt": "tests/test_tensorrt.py",
                    # against numpy written out in the test: no transformers model to match
                    "static": "tests/test_distill.py"}
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
    assert set(RUNNERS) == set(RUNNER_ARTIFACTS) | set(PARITY_ELSEWHERE)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backend", sorted(RUNNER_ARTIFACTS))
def test_runner_matches_unpadded_transformers(backend, family, request, tiny_models):
    model_dir = request.getfixturevalue(RUNNER_ARTIFACTS[backend])[family]
    pipeline = Classifier.open(model_dir, backend, batch_tokens=256)
    manifest = pipeline.artifact.manifest
    # Texts that tokenise to nothing are classified by clsx but cannot be fed to HF alone.
    texts = [t for t in TEXTS if pipeline.artifact.tokenizer(t)["input_ids"]] * 3
    expected = reference_logits(tiny_models[family], texts, manifest.max_length)
    logits = pipeline.predict_all(texts, window_rows=7).logits
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


def test_engine_options_need_an_engine_that_takes_them(tiny_models):
    with pytest.raises(ClsxError, match="--max-num-seqs applies to the vllm backend only"):
        Classifier.open(tiny_models["qwen2"], "torch", RunnerOptions(max_num_seqs=8))


def test_vllm_backend_without_vllm_says_how_to_install_it(tiny_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    with pytest.raises(ClsxError, match=r"make setup-vllm"):
        Classifier.open(tiny_models["qwen2"], "vllm")


def test_vllm_backend_refuses_encoders(tiny_models):
    with pytest.raises(ClsxError, match="decoder classifiers"):
        Classifier.open(tiny_models["bert"], "vllm")
