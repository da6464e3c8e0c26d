"""The vllm backend and export: parity with PyTorch, same output columns, export round trip.

Each ``vllm.LLM`` costs ~20-25 s to start on CPU, so the LLMs are module-scoped and few:
one export (its parity check starts one), and one runner per (family, problem type).
Without vLLM these tests skip, except under ``make test`` (CLSX_REQUIRE_VLLM=1), where a
missing vLLM is a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from clsx.batch.config import BatchPredictConfig
from clsx.batch.local_engine import batch_predict
from clsx.cli import main
from clsx.inference.classifier import Classifier
from clsx.inference.decisions import probabilities
from clsx.inference.runners import RunnerOptions
from clsx.testing.tiny_models import build_tiny_classifier
from tests.conftest import TEXTS, fixed_format_clock, predict, write_parquet

if os.environ.get("CLSX_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  (make test: a missing vLLM must fail, not skip)
else:
    pytest.importorskip("vllm", reason="vLLM is not installed (make setup-vllm)")

pytestmark = pytest.mark.vllm

MULTI = "multi_label_classification"
SINGLE = "single_label_classification"
# Small engines (on CPU: KV cache of 1% of host RAM), as several live at once here.
OPTIONS = RunnerOptions(memory_fraction=0.01)
# The texts, repeated with a window that splits them unevenly, each with a null row.
WINDOW_TEXTS = [*TEXTS, None] * 3


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Tiny classifiers by (family, problem type)."""
    root = tmp_path_factory.mktemp("vllm-models")
    return {
        (family, problem): build_tiny_classifier(
            root / f"{family}-{problem}", family, problem_type=problem, seed=3
        )
        for family in ("qwen2", "llama")
        for problem in (SINGLE, MULTI)
    }


@pytest.fixture(scope="module")
def qwen2_export(models, tmp_path_factory) -> Path:
    """The fp32 vllm export of the single-label Qwen2, made by the CLI (parity checked)."""
    out = tmp_path_factory.mktemp("vllm-export") / "qwen2-vllm"
    result = CliRunner().invoke(main, ["export", str(models["qwen2", SINGLE]), "--format",
                                       "vllm", "--dtype", "fp32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "parity fp32: 32 rows" in result.output
    return out


@pytest.fixture(scope="module")
def pipelines(models, qwen2_export):
    """A vllm Classifier per (family, problem type), opened lazily and closed at the end.

    The single-label Qwen2 runs from its export, the others straight from the checkpoint.
    """
    opened: dict[tuple[str, str], Classifier] = {}

    def get(key: tuple[str, str]) -> Classifier:
        if key not in opened:
            source = qwen2_export if key == ("qwen2", SINGLE) else models[key]
            opened[key] = Classifier.open(source, "vllm", OPTIONS)
        return opened[key]

    yield get
    for pipeline in opened.values():
        pipeline.runner.close()


# Each case starts an engine of its own: the default suite runs one per family and one per
# problem type; the other two combinations (``-m slow``) add no code path.
@pytest.mark.parametrize("family, problem", [
    ("qwen2", SINGLE),
    ("llama", MULTI),
    pytest.param("qwen2", MULTI, marks=pytest.mark.slow),
    pytest.param("llama", SINGLE, marks=pytest.mark.slow),
])
def test_vllm_matches_torch(family, problem, models, pipelines):
    vllm_logits = pipelines((family, problem)).predict_all(WINDOW_TEXTS, 7).logits
    torch_logits = Classifier.open(models[family, problem], "torch").predict_all(
        WINDOW_TEXTS, window_rows=5).logits
    null = np.isnan(torch_logits).any(axis=1)
    assert (np.isnan(vllm_logits).any(axis=1) == null).all() and null.sum() == 3
    np.testing.assert_allclose(vllm_logits[~null], torch_logits[~null], atol=1e-4, rtol=0)
    # Raw logits come back, so probs mean the same as for every other backend.
    np.testing.assert_allclose(probabilities(vllm_logits[~null], problem),
                               probabilities(torch_logits[~null], problem), atol=2e-5, rtol=0)


def test_export_round_trip(qwen2_export, models, pipelines):
    config = json.loads((qwen2_export / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"]
    assert config["problem_type"] == SINGLE and config["dtype"] == "float32"
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["pad_token_id"] is not None
    manifest = json.loads((qwen2_export / "clsx.json").read_text())
    assert manifest["format"] == "vllm" and manifest["parent_fingerprint"]
    assert (qwen2_export / manifest["parent"]).resolve() == models["qwen2", SINGLE].resolve()
    assert manifest["parity"]["fp32"]["max_prob_diff"] < 2e-3
    assert manifest["parity"]["fp32"]["label_agreement"] == 1.0
    assert pipelines(("qwen2", SINGLE)).runner.description == "vllm (fp32, cpu)"
    assert not [p for p in qwen2_export.parent.iterdir() if p.name.startswith(".")]


def test_batch_predict_columns_and_order_equal_torch(models, qwen2_export, pipelines,
                                                     tmp_path, monkeypatch):
    source = write_parquet(tmp_path / "in.parquet", WINDOW_TEXTS * 4)
    torch_out = batch_predict(BatchPredictConfig(
        input=str(source), output=tmp_path / "torch.parquet", model=models["qwen2", SINGLE],
        backend="torch", window_rows=9)).output
    # The engine is already running in this module: batch-predict gets that classifier.
    cached = pipelines(("qwen2", SINGLE))
    monkeypatch.setattr(Classifier, "from_artifact", classmethod(lambda cls, *a, **k: cached))
    monkeypatch.setattr(cached, "close", lambda: None)  # the module's fixture closes it
    vllm_out = batch_predict(BatchPredictConfig(
        input=str(source), output=tmp_path / "vllm.parquet", model=qwen2_export,
        backend="vllm", window_rows=9)).output
    expected, actual = pq.read_table(torch_out), pq.read_table(vllm_out)
    assert actual.schema == expected.schema
    assert actual["id"].equals(expected["id"]) and actual["label"].equals(expected["label"])
    np.testing.assert_allclose(actual["score"].to_numpy(zero_copy_only=False),
                               expected["score"].to_numpy(zero_copy_only=False), atol=2e-5)



def test_long_text_windows_on_vllm_equal_torch(models, pipelines):
    texts = [" ".join(f"word{i % 13}" for i in range(120)), "short", None]
    window = {"strategy": "window", "stride": 8}
    torch = Classifier.open(models["qwen2", SINGLE], "torch", max_length=16, long_text=window)
    cached = pipelines(("qwen2", SINGLE))
    on_vllm = Classifier(cached.artifact, cached.runner, max_length=16, long_text=window)
    assert on_vllm.encoder.encode(texts).pieces[0] > 5
    np.testing.assert_allclose(on_vllm.predict_all(texts).logits,
                               torch.predict_all(texts).logits, atol=2e-5)


def test_auto_formats_measures_vllm_for_a_decoder_and_runs_it(models, pipelines, tmp_path,
                                                              monkeypatch):
    """vLLM is a candidate of the format search for a decoder: it is measured, gated against
    torch fp32 and, fastest on the (fixed) clock, run. The module's engine for this model
    (its vllm export: the same weights) stands in for the two a search and a run would
    start; the ONNX candidates are refused here (test_autoformat.py covers exports)."""
    import clsx.export.cache
    import clsx.inference.classifier
    from clsx.errors import ClsxError

    engine = pipelines(("qwen2", SINGLE)).runner
    monkeypatch.setattr(engine, "close", lambda: None)  # the module's fixture closes it
    load_runner = clsx.inference.classifier.load_runner
    monkeypatch.setattr(clsx.inference.classifier, "load_runner",
                        lambda artifact, backend, options: engine if backend == "vllm"
                        else load_runner(artifact, backend, options))

    def refused(*args, **kwargs):
        raise ClsxError("not exported in this test")

    monkeypatch.setattr(clsx.export.cache, "cached_export", refused)
    fixed_format_clock(monkeypatch, {"torch fp32": 1.0, "vllm fp32": 0.5})
    monkeypatch.setenv("CLSX_CACHE", str(tmp_path / "cache"))
    source = write_parquet(tmp_path / "in.parquet", (TEXTS * 40)[:300])
    model = models["qwen2", SINGLE]
    result = predict(source, tmp_path / "auto.parquet", "-m", model, "--auto-formats")
    assert result.exit_code == 0, result.output
    assert ("backend vllm (fp32, cpu), vllm fp32 chosen by --backend auto: 2.00x torch fp32"
            in result.output)
    (choice,) = json.loads((tmp_path / "cache" / "auto-format.json").read_text()).values()
    assert list(choice["measured"]) == ["torch fp32", "vllm fp32", "openvino fp32", "onnx",
                                        "onnx-int8", "openvino-int8"]
    assert choice["measured"]["vllm fp32"]["qualifies"]  # within 2e-3, every label equal
    assert choice["measured"]["onnx"]["refused"] == "not exported in this test"
    torch_run = predict(source, tmp_path / "torch.parquet", "-m", model, "--backend", "torch")
    assert torch_run.exit_code == 0, torch_run.output
    assert (pq.read_table(tmp_path / "auto.parquet").column("label")
            .equals(pq.read_table(tmp_path / "torch.parquet").column("label")))
