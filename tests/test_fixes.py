"""Bugs found by reading (issue 24): each test failed against the code before its fix.

Most run on the fake runner (``tests/fakes.py``) or without a model at all; the GPU gates
(vLLM, TensorRT) are checked with a scripted parity report, since neither engine runs here.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clsx.artifacts import artifact as artifact_module
from clsx.artifacts.artifact import open_artifact
from clsx.artifacts.manifest import Manifest
from clsx.errors import ClsxError
from clsx.inference.classifier import Classifier
from clsx.inference.runners import RunnerOptions
from clsx.quality.parity import ParityReport, parity_inputs
from tests.conftest import TEXTS, predict, write_parquet
from tests.fakes import FakeRunner, fake_ray

SMALL_PARTS = ("--window-rows", "16", "--part-rows", "16")


@pytest.fixture
def many_texts(tmp_path) -> Path:
    """200 texts: 13 windows of 16 rows."""
    return write_parquet(tmp_path / "in.parquet", (TEXTS * 25)[:200])


def _fail_at_part(monkeypatch, number: int) -> None:
    """Make the job fail (a ClsxError) when it opens part ``number`` (from 0), so that the
    parts before it stay committed for a resume."""
    from clsx.batch.parts.local import PartStore

    writer, opened = PartStore.writer, []

    def failing(self, first, schema):
        if len(opened) == number:
            raise ClsxError("the disk went away")
        opened.append(first)
        return writer(self, first, schema)

    monkeypatch.setattr(PartStore, "writer", failing)


def test_a_store_that_refuses_the_job_still_closes_the_classifier(
        tiny_models, texts_parquet, tmp_path, fake_runner, monkeypatch):
    from clsx.batch.parts.local import PartStore

    closed = []
    monkeypatch.setattr(FakeRunner, "close", lambda self: closed.append(self))

    def refuse(self, job):
        raise ClsxError("no room for the journal")

    monkeypatch.setattr(PartStore, "start", refuse)
    result = predict(texts_parquet, tmp_path / "out.parquet", "-m", tiny_models["bert"])
    assert result.exit_code == 1 and "no room for the journal" in result.output
    assert len(fake_runner.opened) == 1 and closed == fake_runner.opened


def test_a_resume_with_other_settings_is_refused_before_the_model_loads(
        tiny_models, many_texts, tmp_path, fake_runner, monkeypatch):
    out = tmp_path / "out.parquet"
    model = tiny_models["bert"]
    with monkeypatch.context() as patch:
        _fail_at_part(patch, 2)
        failed = predict(many_texts, out, "-m", model, *SMALL_PARTS)
    assert failed.exit_code == 1 and "32 classified rows are saved" in failed.output
    loaded = len(fake_runner.opened)
    other = predict(many_texts, out, "-m", model, *SMALL_PARTS, "--threshold", "0.3",
                    "--resume")
    assert other.exit_code == 1 and "threshold: was not given, now 0.3" in other.output
    assert len(fake_runner.opened) == loaded  # refused without loading the model
    resumed = predict(many_texts, out, "-m", model, *SMALL_PARTS, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert pq.read_table(out).num_rows == 200


def test_a_resume_runs_the_format_its_job_recorded_without_searching_again(
        tiny_models, many_texts, tmp_path, fake_runner, monkeypatch):
    from clsx.auto import formats

    # Two formats that both run on the fake (it ignores the dtype), so the search is quick.
    monkeypatch.setattr(formats, "candidates", lambda decoder: [
        formats.Candidate("torch fp32", "torch", "fp32", "fp32"),
        formats.Candidate("torch bf16", "torch", "bf16", "bf16")])
    out = tmp_path / "out.parquet"
    command = (many_texts, out, "-m", tiny_models["bert"], *SMALL_PARTS, "--auto-formats")
    with monkeypatch.context() as patch:
        _fail_at_part(patch, 2)
        assert predict(*command).exit_code == 1
    recorded = json.loads((tmp_path / "out.parquet.parts" / "job.json").read_text())
    chosen = recorded["auto_format"]
    assert chosen in ("torch fp32", "torch bf16")
    # The machine forgot its choice: the resume runs what the job ran, without measuring.
    (Path(os.environ["CLSX_CACHE"]) / "auto-format.json").unlink()
    monkeypatch.setattr(formats, "_measure", lambda *args: pytest.fail("searched again"))
    resumed = predict(*command, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"{chosen} chosen by --backend auto, remembered: " in resumed.output
    assert fake_runner.opened[-1].dtype == chosen.split()[1]
    assert pq.read_table(out).num_rows == 200


def test_the_fingerprint_is_computed_once_per_batch_predict_job(
        tiny_models, texts_parquet, tmp_path, fake_runner, monkeypatch):
    """The job record and --backend auto's dtype choice (bf16 tried beside fp32) both need
    the model's fingerprint; it is computed once."""
    original, calls = artifact_module.fingerprint, []

    def counted(path):
        calls.append(path)
        return original(path)

    for module in list(sys.modules.values()):  # wherever a module holds the function
        if module is not None and module.__name__.startswith("clsx.") and \
                getattr(module, "fingerprint", None) is original:
            monkeypatch.setattr(module, "fingerprint", counted)
    monkeypatch.setattr("clsx.auto.dtype.native_low_precision", lambda device: ("bf16",))
    result = predict(texts_parquet, tmp_path / "out.parquet", "-m", tiny_models["bert"])
    assert result.exit_code == 0, result.output
    # The dtype probe's fp32 and bf16, then the job's (either: the fake's two are equally
    # fast), with its re-check's fp32 reference below fp32.
    dtypes = [runner.dtype for runner in fake_runner.opened]
    assert dtypes[:2] == ["fp32", "bf16"] and dtypes[2:] in (["fp32"], ["bf16", "fp32"])
    assert calls == [tiny_models["bert"]]


def test_pickle_weights_count_in_the_fingerprint(tiny_models, tmp_path):
    model = Path(shutil.copytree(tiny_models["bert"], tmp_path / "model"))
    (model / "pytorch_model.bin").write_bytes(b"weights before" * 100)
    before = artifact_module.fingerprint(model)
    (model / "pytorch_model.bin").write_bytes(b"weights after!" * 100)  # retrained, same size
    assert artifact_module.fingerprint(model) != before


def test_the_callers_max_length_reaches_the_runner(tiny_models, fake_runner):
    artifact = open_artifact(tiny_models["bert"])
    classifier = Classifier.from_artifact(artifact, "torch", RunnerOptions(max_length=7))
    assert classifier.runner.options.max_length == 7
    assert classifier.encoder.max_length == 7
    given = Classifier.from_artifact(artifact, "torch", RunnerOptions(max_length=7),
                                     max_length=9)
    assert given.runner.options.max_length == given.encoder.max_length == 9


def test_distill_evaluates_a_pickle_teacher_with_allow_pickle(tmp_path):
    from clsx.train import distill
    from clsx.train.config import TrainConfig

    student = TrainConfig(model="student", train=None, output=tmp_path / "student",
                          eval=tmp_path / "eval.parquet", allow_pickle=True)
    assert distill._eval_config(tmp_path / "teacher", student, "auto").allow_pickle


def test_a_template_with_two_text_slots_is_refused(tiny_models):
    manifest = Manifest.load(tiny_models["bert"])
    with pytest.raises(ClsxError, match="more than one"):
        manifest.replace(template="Review: {text}\nAgain: {text}")


class _ClosingRunner(FakeRunner):
    """The fake as a TensorRT engine would be: fp16 by default; records its close."""

    closed: list[_ClosingRunner] = []

    def __init__(self, artifact, options) -> None:
        super().__init__(artifact, options)
        self.dtype = options.dtype or "fp16"

    def close(self) -> None:
        _ClosingRunner.closed.append(self)


def _scripted_export(monkeypatch, module, agreement: float) -> None:
    """Make ``module``'s gate open the fake as its engine and see ``agreement`` of the
    labels equal to fp32's, with probabilities well within every tolerance."""
    monkeypatch.setattr(_ClosingRunner, "closed", [])
    monkeypatch.setattr(module, "open_export", lambda directory, backend, options: Classifier(
        open_artifact(directory, check_parent=False),
        _ClosingRunner(open_artifact(directory, check_parent=False), options)))
    monkeypatch.setattr(module, "compare", lambda reference, logits, rule: ParityReport(
        rows=32, max_abs_diff=1e-4, label_agreement=agreement, max_prob_diff=1e-4))


@pytest.mark.parametrize("agreement", [31 / 32, 1.0])
def test_the_tensorrt_gate_checks_labels_and_closes_its_engine(tiny_models, monkeypatch,
                                                               agreement):
    from clsx.export import onnx

    _scripted_export(monkeypatch, onnx, agreement)
    model = tiny_models["bert"]
    artifact = open_artifact(model)
    probe = parity_inputs(artifact.manifest, artifact.tokenizer, rows=32)
    if agreement < 1.0:
        with pytest.raises(ClsxError, match="labels differ from PyTorch fp32's on 3.1% of 32"):
            onnx._check_tensorrt(model, np.zeros((32, 2), np.float32), probe)
    else:
        assert onnx._check_tensorrt(model, np.zeros((32, 2), np.float32), probe).rows == 32
    assert len(_ClosingRunner.closed) == 1


def test_the_vllm_export_gate_checks_labels(tiny_models, tmp_path, monkeypatch):
    from clsx.export import vllm

    _scripted_export(monkeypatch, vllm, 31 / 32)
    monkeypatch.setattr(vllm, "_require_vllm", lambda: None)
    with pytest.raises(ClsxError, match=r"vLLM \(bf16\) labels differ from PyTorch fp32's"):
        vllm.export_vllm(tiny_models["qwen2"], tmp_path / "vllm", dtype="bf16")
    assert not (tmp_path / "vllm").exists()


@pytest.fixture
def callers_threads():
    """The test process's torch thread count, set to 3 for the test and restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


def test_the_torch_runner_leaves_the_callers_thread_count_alone(tiny_models, callers_threads):
    classifier = Classifier.open(tiny_models["bert"], "torch",
                                 RunnerOptions(device="cpu", threads=2))
    assert torch.get_num_threads() == callers_threads
    model, seen = classifier.runner.model, []

    def counting(input_ids, attention_mask):
        seen.append(torch.get_num_threads())
        return model(input_ids, attention_mask)

    classifier.runner.model = counting
    classifier.predict(TEXTS)
    assert seen and set(seen) == {2}  # the runner's own count while it computes
    assert torch.get_num_threads() == callers_threads


@pytest.mark.parametrize("lost", [0, 1])
def test_ray_output_must_hold_every_row_read(tiny_models, texts_parquet, tmp_path,
                                             fake_runner, monkeypatch, lost):
    fake_ray(monkeypatch, lost)
    out = tmp_path / "out"
    result = predict(texts_parquet, out, "-m", tiny_models["bert"], "--engine", "ray")
    rows = pq.read_table(texts_parquet).num_rows
    if lost:
        assert result.exit_code == 1
        assert (f"an actor returned {rows - lost} predictions for windows 0..0 of {rows} rows"
                in result.output)
        assert not out.exists()
    else:
        assert result.exit_code == 0, result.output
        assert pq.read_table(out).num_rows == rows


def test_parts_that_miss_rows_are_not_published(tiny_models, texts_parquet, tmp_path):
    """The last check before OUT appears: the parts hold every row read."""
    from clsx.batch.config import BatchPredictConfig
    from clsx.batch.local_engine import publish
    from clsx.batch.parts import open_store
    from clsx.io.storage import location

    out = tmp_path / "out.parquet"
    store = open_store(location(out))
    table = pq.read_table(texts_parquet)
    with store.locked():
        store.start({"job": 1})
        writer = store.writer(0, table.schema)
        writer.write(table.to_batches()[0].slice(1))
        writer.commit(0)
        config = BatchPredictConfig(input=str(texts_parquet), output=out, model="m")
        with pytest.raises(ClsxError, match=f"the job's parts hold {table.num_rows - 1} rows "
                           f"but {table.num_rows} were read from"):
            publish(config, store, table.schema, table.num_rows)
    assert not out.exists()


def test_ray_refuses_an_existing_output_before_searching_or_starting(
        tiny_models, texts_parquet, tmp_path, fake_runner, monkeypatch):
    from clsx.batch import ray_engine

    fake_ray(monkeypatch)
    monkeypatch.setattr(ray_engine, "pin_auto_format", lambda *a, **k: pytest.fail("searched"))
    monkeypatch.setattr(ray_engine, "_start_ray", lambda *args: pytest.fail("started Ray"))
    out = tmp_path / "out"
    out.mkdir()
    result = predict(texts_parquet, out, "-m", tiny_models["bert"], "--engine", "ray")
    assert result.exit_code == 1
    assert f"output {out} exists; pass --overwrite to replace it" in result.output
