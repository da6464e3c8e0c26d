"""The PyTorch CUDA paths against the CPU fp32 reference (run with ``pytest -m gpu``).

They need only a CUDA build of torch; the TensorRT ones are in test_tensorrt.py.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from clsx.cli import main
from clsx.inference.classifier import Classifier
from clsx.inference.runners import RunnerOptions
from clsx.quality.parity import PROB_TOLERANCES, compare
from tests.conftest import TEXTS, write_parquet

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device and a CUDA build of torch")


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("family", ["qwen2", "llama", "bert"])
def test_torch_on_cuda_matches_cpu_fp32(family, dtype, tiny_models):
    reference = Classifier.open(tiny_models[family], "torch", RunnerOptions(device="cpu"))
    gpu = Classifier.open(tiny_models[family], "torch", RunnerOptions(device="cuda", dtype=dtype))
    assert gpu.runner.description == f"torch ({dtype}, cuda)"
    report = compare(reference.predict_all(TEXTS).logits, gpu.predict_all(TEXTS).logits,
                     gpu.rule)
    assert report.max_prob_diff <= PROB_TOLERANCES[dtype]
    assert report.label_agreement >= 0.98


def test_batch_predict_auto_on_cuda_picks_a_checked_dtype(tiny_models, tmp_path, monkeypatch):
    """``--backend auto`` on CUDA measures the GPU's native low precisions beside fp32 and
    runs the fastest one that passed its gate.

    The session's ``fp32_when_auto`` pin (no low precision anywhere) is lifted here, or
    auto would have nothing to choose from. Every candidate really runs and is gated; only
    the clock is fixed (fp16 fastest, then bf16, then fp32), so that the choice is known.
    """
    from clsx.auto import dtype as autoselect
    from clsx.inference.hardware import native_low_precision

    monkeypatch.setattr(autoselect, "native_low_precision", native_low_precision)
    seconds = {"fp16": 1.0, "bf16": 2.0, "fp32": 3.0}
    monkeypatch.setattr(autoselect, "best_time", lambda run, repeats, *args: (
        run(*args), seconds[run.__self__.runner.dtype]))
    monkeypatch.setenv("CLSX_CACHE", str(tmp_path / "cache"))
    data = write_parquet(tmp_path / "in.parquet", TEXTS * 20)
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(main, ["batch-predict", str(data), str(out), "-m",
                                       str(tiny_models["qwen2"]), "--device", "cuda"])
    assert result.exit_code == 0, result.output
    assert pq.read_metadata(out).num_rows == len(TEXTS) * 20
    (choice,) = json.loads((tmp_path / "cache" / "auto-dtype.json").read_text()).values()
    measured = choice["measured"]
    candidates = native_low_precision("cuda")
    assert "fp16" in candidates and set(measured) == {"fp32", *candidates}
    # Tiny random models pass the low-precision gates (test_torch_on_cuda_matches_cpu_fp32).
    assert any(measured[dtype]["qualifies"] for dtype in candidates)
    expected = next(dtype for dtype in sorted(seconds, key=seconds.get)
                    if dtype in measured and measured[dtype]["qualifies"])
    assert choice["dtype"] == expected
    assert f"torch ({expected}, cuda)" in result.output  # the dtype the run itself used


def test_bench_on_cuda_compares_every_torch_dtype_with_fp32(tiny_models, tmp_path):
    data = write_parquet(tmp_path / "in.parquet", TEXTS * 20)
    result = CliRunner().invoke(main, ["bench", "-m", str(tiny_models["llama"]), "--data",
                                       str(data), "--device", "cuda", "--backends",
                                       "torch,torch-bf16"])
    assert result.exit_code == 0, result.output
    assert "torch (fp32, cuda)" in result.output and "torch (bf16, cuda)" in result.output
