"""Lower-precision torch (--dtype) and --backend auto's choice of the fastest passing dtype."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clsx.artifacts.artifact import open_artifact
from clsx.auto import dtype as autoselect
from clsx.auto.dtype import choose_dtype
from clsx.auto.resolve import classifier_for
from clsx.errors import ClsxError
from clsx.inference.classifier import Classifier
from clsx.inference.runners import RunnerOptions
from clsx.quality.parity import PROB_TOLERANCES
from tests.conftest import TEXTS

CPU = RunnerOptions(device="cpu")


def test_torch_bf16_follows_fp32_within_the_low_precision_gate(tiny_models):
    fp32 = Classifier.open(tiny_models["qwen2"], "torch", CPU)
    bf16 = Classifier.open(tiny_models["qwen2"], "torch", RunnerOptions(device="cpu", dtype="bf16"))
    assert bf16.runner.description == "torch (bf16, cpu)"
    reference, logits = fp32.predict_all(TEXTS).logits, bf16.predict_all(TEXTS).logits
    present = ~np.isnan(reference).any(axis=1)
    assert np.abs(reference[present] - logits[present]).max() < 0.1


def test_fp16_on_cpu_is_refused(tiny_models):
    with pytest.raises(ClsxError, match="fp16 needs a GPU"):
        Classifier.open(tiny_models["bert"], "torch", RunnerOptions(device="cpu", dtype="fp16"))


def test_dtype_is_refused_by_a_backend_that_ignores_it(tiny_exports):
    with pytest.raises(ClsxError,
                       match="--dtype applies to the torch, openvino, vllm and tensorrt "
                             "backends only"):
        Classifier.open(tiny_exports["bert"], "onnx", RunnerOptions(dtype="bf16"))


def test_without_native_low_precision_auto_runs_fp32_without_measuring(tiny_models, tmp_path):
    choice = choose_dtype(open_artifact(tiny_models["llama"]), CPU, candidates=(),
                          cache=tmp_path / "cache.json")
    assert choice.dtype == "fp32" and choice.measured == {}
    assert not (tmp_path / "cache.json").exists()


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [(2.0, 1.0, "bf16"), (1.0, 2.0, "fp32")])
def test_auto_picks_the_fastest_passing_dtype_and_remembers_it(fp32_s, bf16_s, expected,
                                                                 tiny_models, tmp_path,
                                                                 monkeypatch):
    # Both dtypes really run and are gated; only the clock is fixed, so that the choice
    # is known in advance (on the real clock it depends on the CPU).
    seconds = iter([fp32_s, bf16_s])  # _measure runs fp32 first, then each candidate
    monkeypatch.setattr(autoselect, "best_time",
                        lambda run, repeats, *args: (run(*args), next(seconds)))
    cache = tmp_path / "cache.json"
    artifact = open_artifact(tiny_models["llama"])
    choice = choose_dtype(artifact, CPU, candidates=("bf16",), cache=cache)
    assert set(choice.measured) == {"fp32", "bf16"} and not choice.cached
    assert choice.measured["bf16"]["qualifies"]  # tiny random models pass the 5e-2 gate
    assert choice.measured["fp32"]["rows_per_s"] == autoselect.PROBE_ROWS / fp32_s
    assert choice.dtype == expected
    # The same model on the same machine: the remembered choice, without measuring.
    monkeypatch.setattr(autoselect, "_measure", lambda *args: pytest.fail("measured again"))
    again = choose_dtype(artifact, CPU, candidates=("bf16",), cache=cache)
    assert again.cached and again.dtype == expected
    assert len(json.loads(cache.read_text())) == 1


def test_a_dtype_outside_the_gate_is_never_chosen(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(PROB_TOLERANCES, "bf16", 0.0)
    choice = choose_dtype(open_artifact(tiny_models["qwen2"]), CPU, candidates=("bf16",),
                          cache=tmp_path / "cache.json")
    assert not choice.measured["bf16"]["qualifies"] and choice.dtype == "fp32"


def test_pipeline_auto_uses_the_chosen_dtype(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(autoselect, "native_low_precision", lambda device: ("bf16",))
    # A file where the cache directory should be: unwritable even as root, and only an
    # unremembered choice, not an error.
    blocker = tmp_path / "cache"
    blocker.write_text("")
    monkeypatch.setenv("CLSX_CACHE", str(blocker))
    monkeypatch.setattr(autoselect, "_measure", lambda artifact, options, candidates: {
        "fp32": {"rows_per_s": 1.0, "max_prob_diff": 0.0, "qualifies": True},
        "bf16": {"rows_per_s": 3.0, "max_prob_diff": 1e-3, "qualifies": True}})
    artifact = open_artifact(tiny_models["bert"])
    assert classifier_for(artifact).runner.description == "torch (bf16, cpu)"
    explicit = classifier_for(artifact, options=RunnerOptions(dtype="fp32"))
    assert explicit.runner.description == "torch (fp32, cpu)"
    # A classifier opened directly runs its backend's default dtype: only the resolver measures.
    assert Classifier.open(tiny_models["bert"]).runner.description == "torch (fp32, cpu)"
    assert blocker.read_text() == "" and list(tmp_path.iterdir()) == [blocker]
