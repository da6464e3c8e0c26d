"""Re-check: the rows a lower-precision run is unsure of get fp32's output.

The fast path is a fake (:class:`PlantedFlips`): the fake runner in ``--dtype bf16`` that
swaps the top two logits of every row whose fp32 margin is small, so its flips sit near the
boundary where real bf16 / int8 flips sit. The reference is the same fake in fp32.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import clsx
import clsx.inference.runners
from clsx.inference.classifier import Classifier
from clsx.inference.decisions import MULTI, SINGLE, DecisionRule
from clsx.inference.recheck import Recheck, margins
from clsx.quality.recheck import choose_cut, rows_to_show, upper_bound
from clsx.testing.tiny_models import build_tiny_classifier
from tests.conftest import TEXTS, interrupted_then_resumed, predict, write_parquet
from tests.fakes import FakeRunner

NEAR = 0.15  # rows under this fp32 margin are flipped by the fast fake


class PlantedFlips(FakeRunner):
    """The fake runner; below fp32 it flips the decision of every row whose fp32 margin is
    under :data:`NEAR` (single-label: swaps the top two logits; multi-label: moves each
    probability within NEAR of 0.5 to the other side)."""

    def logits(self, rows):
        logits = super().logits(rows)
        if self.dtype == "fp32":
            return logits
        rule = DecisionRule.of(self.artifact.manifest)
        near = margins(rule, logits) < NEAR
        if rule.problem_type == MULTI:
            logits[near] = -logits[near]  # sigmoid(-x) = 1 - sigmoid(x): every label flips
            return logits
        order = np.argsort(logits, axis=1)
        rows_near = np.flatnonzero(near)
        top, second = order[rows_near, -1], order[rows_near, -2]
        logits[rows_near, top], logits[rows_near, second] = (logits[rows_near, second],
                                                             logits[rows_near, top])
        return logits


@pytest.fixture
def planted(monkeypatch, tmp_path_factory) -> Path:
    """The torch backend runs on :class:`PlantedFlips`; returns the fresh clsx cache."""
    monkeypatch.setitem(clsx.inference.runners.RUNNERS, "torch", "tests.test_recheck:PlantedFlips")
    cache = tmp_path_factory.mktemp("recheck-cache")
    monkeypatch.setenv("CLSX_CACHE", str(cache))
    return cache


def random_texts(count: int, seed: int = 0) -> list[str | None]:
    words = " ".join(TEXTS).split()
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(count)] + [None]


def run_ok(source, out, model, *options):
    result = predict(source, out, "-m", model, *options)
    assert result.exit_code == 0, result.output
    return pq.read_table(out), result.output


def test_margins_by_problem_type():
    single = DecisionRule(SINGLE, ("a", "b", "c"), (0.5,) * 3)
    logits = np.log(np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [np.nan] * 3], np.float32))
    np.testing.assert_allclose(margins(single, logits), [0.2, 0.0, np.inf], atol=1e-6)
    multi = DecisionRule(MULTI, ("a", "b"), (0.3, 0.8))
    probs = np.array([[0.35, 0.1], [0.9, 0.75]], np.float32)
    np.testing.assert_allclose(margins(multi, np.log(probs / (1 - probs))), [0.05, 0.05],
                               atol=1e-6)
    regression = DecisionRule("regression", ("value",), (0.5,))
    assert np.isinf(margins(regression, np.ones((2, 1), np.float32))).all()


def test_near_boundary_flips_are_all_corrected_and_counted(tiny_models, tmp_path, planted):
    source = write_parquet(tmp_path / "in.parquet", random_texts(600))
    exact, _ = run_ok(source, tmp_path / "fp32.parquet", tiny_models["qwen2"], "--dtype", "fp32")
    fast, _ = run_ok(source, tmp_path / "fast.parquet", tiny_models["qwen2"], "--dtype", "bf16",
                   "--no-recheck")
    flips = int((np.array(fast.column("label")) != np.array(exact.column("label"))).sum())
    assert flips > 20  # the fake flips enough rows for the test to mean something
    checked, output = run_ok(source, tmp_path / "checked.parquet", tiny_models["qwen2"],
                           "--dtype", "bf16")
    assert checked.column("label").equals(exact.column("label"))
    assert f"{flips} labels changed" in output and "rows re-checked in fp32" in output
    rechecked = int(output.split(" rows re-checked")[0].rsplit(" ", 1)[1])
    assert flips <= rechecked < 600  # the unsure rows, not all of them
    # Re-checked rows carry the reference's probs; the others the fast path's (same here).
    assert checked.column("probs").equals(exact.column("probs"))


def test_a_far_flip_in_the_sample_is_reported_not_hidden():
    rule = DecisionRule(SINGLE, ("a", "b"), (0.5, 0.5))
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 2, (500, 2)).astype(np.float32)
    fast = reference + rng.normal(0, 0.01, reference.shape).astype(np.float32)
    far = int(np.argmax(np.abs(reference[:, 0] - reference[:, 1])))  # the surest row
    fast[far] = fast[far, ::-1]
    cut = choose_cut(rule, fast, reference)
    assert cut.flips >= 1 and cut.at_risk == 1 and cut.margin == 0.5  # capped: no cover
    assert cut.upper_bound == pytest.approx(upper_bound(1, 500))
    assert "1 rows at risk above the cut" in cut.describe(1e-4)
    assert f">= {rows_to_show(1e-4)} rows" in cut.describe(1e-4)
    assert "showing it takes" not in cut.describe(0.05)
    clean = choose_cut(rule, reference + np.float32([1e-3, 0]), reference)
    assert clean.flips == 0 and clean.at_risk == 0 and 0 < clean.margin < 0.01
    assert clean.upper_bound == pytest.approx(1 - 0.05 ** (1 / 500), rel=1e-6)


def test_multi_label_at_tuned_thresholds(tmp_path, planted):
    model = build_tiny_classifier(tmp_path / "multi", "bert", problem_type=MULTI, seed=5)
    manifest = json.loads((model / "clsx.json").read_text())
    manifest["thresholds"] = [0.45, 0.55, 0.5][: len(manifest["labels"])]
    (model / "clsx.json").write_text(json.dumps(manifest))
    source = write_parquet(tmp_path / "in.parquet", random_texts(300, seed=2))
    exact, _ = run_ok(source, tmp_path / "fp32.parquet", model, "--dtype", "fp32")
    fast, _ = run_ok(source, tmp_path / "fast.parquet", model, "--dtype", "bf16", "--no-recheck")
    assert not fast.column("labels").equals(exact.column("labels"))
    checked, output = run_ok(source, tmp_path / "checked.parquet", model, "--dtype", "bf16")
    assert checked.column("labels").equals(exact.column("labels"))
    assert "rows re-checked in fp32" in output


def test_nothing_unsure_never_loads_the_reference(tiny_models):
    opened = []
    classifier = Classifier.open(tiny_models["qwen2"], "torch")
    classifier.recheck = Recheck(0.0, lambda: opened.append(1))
    prediction = classifier.predict_all(TEXTS)
    assert prediction.counts.rechecked == 0 and not opened


def test_a_resumed_job_keeps_its_cut(tiny_models, tmp_path, planted, monkeypatch):
    source = write_parquet(tmp_path / "in.parquet", random_texts(400, seed=3))
    options = ("--dtype", "bf16", "--window-rows", "50", "--part-rows", "50")
    whole, _ = run_ok(source, tmp_path / "whole.parquet", tiny_models["qwen2"], *options)
    out = tmp_path / "out.parquet"

    def forget_the_cut() -> None:
        # This machine now remembers another cut (re-measured, or copied from elsewhere):
        # 0, which re-checks nothing. The resume still re-checks at the job's own cut.
        cache = planted / "auto-recheck.json"
        entries = json.loads(cache.read_text())
        cache.write_text(json.dumps({k: {**v, "margin": 0.0} for k, v in entries.items()}))

    interrupted_then_resumed(source, out, tiny_models["qwen2"], 3, monkeypatch, *options,
                             before_resume=forget_the_cut)
    assert pq.read_table(out).equals(whole)


def test_an_export_without_its_parent_is_refused_unless_no_recheck(tiny_exports, tmp_path,
                                                                   texts_parquet):
    moved = tmp_path / "deeper" / "than" / "before" / "int8"
    shutil.copytree(tiny_exports["bert"], moved)  # its relative parent link leads nowhere
    manifest = json.loads((moved / "clsx.json").read_text())
    manifest["format"] = "onnx-int8"  # the fp32 graph, labelled as int8: a re-checked format
    (moved / "clsx.json").write_text(json.dumps(manifest))
    refused = predict(texts_parquet, tmp_path / "o.parquet", "-m", moved)
    assert refused.exit_code == 1
    assert "parent model directory" in refused.output and "--no-recheck" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.parquet").exists()
    assert predict(texts_parquet, tmp_path / "o.parquet", "-m", moved,
                   "--no-recheck").exit_code == 0


def int8_labelled(export: Path, directory: Path, margin: float) -> Path:
    """A copy of the fp32 ONNX ``export`` labelled onnx-int8 (a re-checked format) with a
    stored re-check cut of ``margin``, its parent link still leading to its model."""
    copy = Path(shutil.copytree(export, directory / "int8"))
    manifest = json.loads((copy / "clsx.json").read_text())
    parent = (export / manifest["parent"]).resolve()
    manifest.update(format="onnx-int8", parent=os.path.relpath(parent, copy))
    manifest["parity"]["recheck"] = {"margin": margin, "rows": 512, "flips": 0, "at_risk": 0,
                                     "upper_bound": 0.006, "rechecked_share": 0.5}
    (copy / "clsx.json").write_text(json.dumps(manifest))
    return copy


def test_the_python_api_rechecks_like_batch_predict(tiny_models, planted):
    texts = random_texts(300, seed=5)
    with clsx.load(tiny_models["qwen2"], dtype="fp32") as exact:
        expected = exact.predict(texts)
    with clsx.load(tiny_models["qwen2"], dtype="bf16", recheck=False) as fast:
        assert fast.predict(texts) != expected  # the planted flips
    with clsx.load(tiny_models["qwen2"], dtype="bf16") as checked:
        assert checked.predict(texts) == expected


def test_a_cascade_sends_the_unsure_rows_to_the_fallback_model(tiny_models, qwen2_copy,
                                                               tmp_path, planted):
    """The first model is the planted fast path without re-check (its flips stand for a
    student's mistakes); the fallback is the same weights in fp32, another directory."""
    source = write_parquet(tmp_path / "in.parquet", random_texts(400, seed=6))
    teacher, _ = run_ok(source, tmp_path / "teacher.parquet", qwen2_copy)
    student, _ = run_ok(source, tmp_path / "student.parquet", tiny_models["qwen2"], "--dtype",
                      "bf16", "--no-recheck")
    assert not student.column("label").equals(teacher.column("label"))
    cascade, output = run_ok(source, tmp_path / "cascade.parquet", tiny_models["qwen2"],
                           "--dtype", "bf16", "--no-recheck", "--fallback-model", qwen2_copy,
                           "--fallback-agreement", "1")
    # The whole input is the sample here, so the cut sends every disagreement.
    assert cascade.column("label").equals(teacher.column("label"))
    assert "agreeing with it alone on 100.00%" in output
    sent = int(output.split(" rows (")[0].rsplit(" ", 1)[1])
    assert 0 < sent < 400 and "sent to the fallback model (margin <" in output
    sent_rows = np.array(student.column("label")) != np.array(teacher.column("label"))
    probs = [np.array(t.column("probs").to_pylist()[:-1]) for t in (teacher, cascade)]
    np.testing.assert_array_equal(probs[1][sent_rows[:-1]], probs[0][sent_rows[:-1]])


def test_a_cascade_leaves_unchecked_the_rows_it_sends_whatever_fp32_says(tiny_models,
                                                                          qwen2_copy):
    """Rows under the fallback's cut by more than δ go to the fallback model whichever
    logits the first model ends with: only the rows between are re-checked."""
    from clsx.inference.classifier import Fallback

    texts = random_texts(300, seed=3)[:-1]
    with Classifier.open(tiny_models["qwen2"], "torch") as classifier:
        margin = margins(classifier.rule, classifier.predict_all(texts).logits)
        delta, below = np.quantile(margin, 0.6), np.quantile(margin, 0.2)
        classifier.recheck = Recheck(float(delta), lambda: classifier.runner)
        alone = classifier.predict_all(texts)
        classifier.fallback = Fallback(float(delta + below), Classifier.open(qwen2_copy,
                                                                             "torch"))
        cascade = classifier.predict_all(texts)
        classifier.recheck = None  # its reference is the classifier's own runner
    assert alone.counts.rechecked == (margin < delta).sum()
    assert cascade.counts.rechecked == ((margin >= below) & (margin < delta)).sum() > 0
    assert cascade.counts.fallback == (margin < delta + below).sum()


def test_the_fallback_model_runs_as_auto_would_run_it_alone(tiny_models, tmp_path, planted,
                                                            monkeypatch):
    """The fallback model gets its own format search (here: torch bf16, the planted fast
    path), timed on the quarter of the sample the first model is least sure of (the rows
    it will get), and its own re-check, so the rows it takes get its fp32 labels; a resume
    runs the format and cuts its journal records, without searching or measuring again."""
    from clsx.auto import formats as autoformat

    probes = []
    monkeypatch.setattr(autoformat, "FORMAT_SEARCH_MIN_ROWS", 1)
    monkeypatch.setattr(autoformat, "installed", lambda package: False)
    monkeypatch.setattr(autoformat, "native_low_precision", lambda device: ("bf16",))
    monkeypatch.setattr(autoformat, "_measure", lambda artifact, options, texts, probe, *rest: (
        probes.append(probe) or {
            "torch fp32": {"precision": "fp32", "qualifies": True, "rows_per_s": 100.0,
                           "rows": 256},
            "torch bf16": {"precision": "bf16", "qualifies": True, "rows_per_s": 300.0,
                           "rows": 256}}))
    texts = random_texts(400, seed=7)
    source = write_parquet(tmp_path / "in.parquet", texts)
    alone, _ = run_ok(source, tmp_path / "alone.parquet", tiny_models["qwen2"], "--dtype", "fp32")
    options = ("--dtype", "fp32", "--fallback-model", str(tiny_models["qwen2"]),
               "--fallback-agreement", "1", "--window-rows", "50", "--part-rows", "50")
    cascade, output = run_ok(source, tmp_path / "cascade.parquet", tiny_models["bert"], *options)
    assert "--fallback-model: --backend auto chose torch bf16" in output
    assert "--fallback-model: --recheck: " in output
    assert "fallback model torch bf16 chosen by --backend auto" in output.splitlines()[-1]
    assert "of them re-checked in fp32 by it (margin < " in output.splitlines()[-1]
    # Every row the first model (another tokenizer: other logits) disagrees on is sent, and
    # takes the fallback's re-checked labels: fp32's, none of the planted bf16 flips.
    assert cascade.column("label").equals(alone.column("label"))
    with Classifier.open(tiny_models["bert"], "torch") as first:
        margin = margins(first.rule, first.predict_all(texts[:-1]).logits)
    [probe] = probes
    assert len(probe) == 100 and "on 256 rows of IN the cascade's first model is least" in output
    least_sure = np.isin(texts[:-1], probe)
    assert margin[least_sure].max() <= margin[~least_sure].min()

    def forget_everything():  # the resume must follow its journal, not this machine's memory
        monkeypatch.setattr(autoformat, "_measure", lambda *args: pytest.fail("searched"))
        for remembered in planted.glob("auto-*.json"):
            remembered.unlink()

    out = tmp_path / "resumed.parquet"
    resumed = interrupted_then_resumed(source, out, tiny_models["bert"], 8, monkeypatch,
                                       *options, before_resume=forget_everything)
    assert "the format this job ran before it was interrupted" in resumed  # no search
    assert "--recheck:" not in resumed and "go to the fallback model" not in resumed
    assert pq.read_table(out).column("label").equals(alone.column("label"))


def test_a_fallback_model_with_other_labels_is_refused(tiny_models, qwen2_copy, texts_parquet,
                                                       tmp_path):
    manifest = json.loads((qwen2_copy / "clsx.json").read_text())
    manifest["labels"] = [*manifest["labels"][:-1], "other"]
    (qwen2_copy / "clsx.json").write_text(json.dumps(manifest))
    refused = predict(texts_parquet, tmp_path / "o.parquet", "-m", tiny_models["qwen2"],
                      "--fallback-model", qwen2_copy)
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    assert "must have the labels and problem type" in refused.output


def test_vllm_rows_are_rechecked_by_torch_fp32_not_a_second_engine(tiny_models):
    from clsx.auto.recheck import reference_opener
    from clsx.inference.runners import Runner, RunnerOptions
    from clsx.inference.runners.torch import TorchRunner
    from clsx.inference.runners.vllm import VllmRunner

    with Classifier.open(tiny_models["qwen2"], "torch") as classifier:
        engine = VllmRunner.__new__(VllmRunner)  # its options, without starting vLLM
        Runner.__init__(engine, classifier.artifact,
                        RunnerOptions(device="cpu", dtype="bf16", max_num_seqs=8))
        classifier.runner, torch_runner = engine, classifier.runner
        reference = reference_opener(classifier)()
        classifier.runner = torch_runner
    assert isinstance(reference, TorchRunner) and reference.precision == "fp32"


def test_the_cascade_cut_keeps_its_agreement_on_new_rows_not_only_on_the_sample():
    """A first model whose disagreements with the fallback thin out as its margin grows: the
    cut chosen on 512 sample rows for 0.99 keeps 0.99 on fresh rows of the same kind, on
    average over 300 samples (leaving the sample's own agreement at 0.99 gave 0.988)."""
    from clsx.quality.recheck import choose_fallback_cut

    rng = np.random.default_rng(0)
    fresh, fresh_differ = _cascade_rows(rng, 200_000)
    fresh_margin = margins(TWO_LABELS, fresh)
    agreement = []
    for _ in range(300):
        logits, differ = _cascade_rows(rng, 512)
        first = np.zeros(512, np.int64)
        cut = choose_fallback_cut(TWO_LABELS, logits, first, first + differ, 0.99)
        assert cut.agreement >= 0.99
        agreement.append(1 - (fresh_differ & (fresh_margin >= cut.margin)).mean())
    assert np.mean(agreement) >= 0.99, np.mean(agreement)


def test_a_big_jobs_cascade_samples_enough_rows_to_send_no_more_than_its_target_needs():
    """At 0.995 a 512-row sample may leave one disagreement above the cut, so it sends rows
    that a 1,999-row sample (nine left) keeps: a big job samples that many, a small one 512,
    and the sample is at most a fiftieth of the job. Both sizes keep the agreement on fresh
    rows; the bigger one sends fewer of them."""
    from clsx.auto.recheck import cascade_sample_size
    from clsx.quality.recheck import choose_fallback_cut

    assert cascade_sample_size(0.995, 1_000_000) == 1999
    assert cascade_sample_size(0.995, 50_000) == 1000
    assert cascade_sample_size(0.995, 10_000) == 512
    assert cascade_sample_size(0.999, 10**8) == 8192
    assert cascade_sample_size(1.0, 10**8) == 512
    rng = np.random.default_rng(1)
    fresh, fresh_differ = _cascade_rows(rng, 200_000)
    fresh_margin = margins(TWO_LABELS, fresh)
    agreement, sent = {512: [], 1999: []}, {512: [], 1999: []}
    for _ in range(100):
        for size in agreement:
            logits, differ = _cascade_rows(rng, size)
            first = np.zeros(size, np.int64)
            cut = choose_fallback_cut(TWO_LABELS, logits, first, first + differ, 0.995)
            agreement[size].append(1 - (fresh_differ & (fresh_margin >= cut.margin)).mean())
            sent[size].append((fresh_margin < cut.margin).mean())
    assert min(np.mean(values) for values in agreement.values()) >= 0.995, agreement
    assert np.mean(sent[1999]) < np.mean(sent[512]) - 0.02, sent


TWO_LABELS = DecisionRule(SINGLE, ("a", "b"), (0.5, 0.5))


def _cascade_rows(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` rows of a first model (two labels, logits) and whether the fallback model
    disagrees with each: disagreements thin out as the first model's margin grows."""
    top = rng.uniform(0.5, 1.0, count)  # margin = 2 top - 1
    differ = rng.uniform(size=count) < 0.3 * (1 - top) / 0.5
    return np.log(np.column_stack([top, 1 - top])), differ
