"""``clsx sweep`` on a tiny random BERT: grid and TPE search, pruning, kill and --resume,
and the one-line errors for a search that cannot run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_clsx, write_parquet
from tests.test_train import NEGATIVE, POSITIVE, write_jsonl

# Small and quick: 16 sentences, full fine-tuning, two steps an epoch, no calibration.
FIXED = ("--method", "full", "--batch-size", "8", "--max-length", "16", "--warmup", "0",
         "--no-calibration")


@pytest.fixture
def sentiment(tmp_path):
    rows = [{"text": t, "label": "pos"} for t in POSITIVE] + [
        {"text": t, "label": "neg"} for t in NEGATIVE]
    return write_jsonl(tmp_path / "train.jsonl", rows)


def _sweep(base, data, out, *args):
    return run_clsx("sweep", "--model", base, "--train", data, "--eval", data, "--output", out,
                    *FIXED, *args)


def _table(out):
    return json.loads((out / "trials.json").read_text())


def _leftovers(out):
    """Hidden work, staging or checkpoint directories a sweep left behind."""
    return [*out.glob(".*"), *(out / "trials").glob(".*")]


def test_grid_prunes_an_absurd_trial_and_publishes_the_best(tiny_bases, sentiment, tmp_path):
    out = tmp_path / "sweep"
    # lr 30 sends the loss into the thousands after one epoch: the median pruner, judging
    # from the third trial on, must stop it there. The loss is the metric (the tiny random
    # model's accuracy stays at chance whatever the learning rate).
    grid = ("--grid", "--lr", "1e-3,3e-3,30", "--epochs", "2", "--metric", "loss")
    result = _sweep(tiny_bases["bert"], sentiment, out, *grid)
    assert result.exit_code == 0, result.output
    table = _table(out)
    trials = table["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"]
    assert [t["params"]["lr"] for t in trials] == [1e-3, 3e-3, 30.0]
    assert len(trials[2]["epochs"]) == 1 and trials[2]["value"] > 10  # stopped after epoch 1
    assert all(len(t["epochs"]) == 2 for t in trials[:2])
    best = min(trials[:2], key=lambda t: t["value"])
    assert table["best_trial"] == best["number"] and best["best"]
    assert f"Best: trial {best['number']}, loss" in result.output

    # OUTPUT/best is a normal model directory, trained with the best trial's settings.
    manifest = json.loads((out / "best" / "clsx.json").read_text())
    assert manifest["training"]["lr"] == best["params"]["lr"]
    source = write_parquet(tmp_path / "in.parquet", ["great food"])
    predicted = run_clsx("batch-predict", source, tmp_path / "o.parquet", "-m", out / "best",
                         "-q")
    assert predicted.exit_code == 0, predicted.output
    # Trial directories keep their record only; no work or staging directory is left.
    assert {p.name for p in (out / "trials").iterdir()} == {"000", "001"}
    assert {p.name for p in (out / "trials" / "000").iterdir()} == {"clsx.json",
                                                                     "metrics.json"}
    assert not _leftovers(out)
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")
    markdown = (out / "trials.md").read_text()
    assert "**complete (best)**" in markdown and "| pruned |" in markdown

    # The finished sweep: --resume has nothing left to run; other settings are refused.
    again = _sweep(tiny_bases["bert"], sentiment, out, *grid, "--resume")
    assert again.exit_code == 0, again.output
    assert len(_table(out)["trials"]) == 3
    other = _sweep(tiny_bases["bert"], sentiment, out, "--grid", "--lr", "1e-3,3e-3",
                   "--epochs", "2", "--metric", "loss", "--resume")
    assert other.exit_code == 1
    assert other.output.count("\n") == 1 and "Traceback" not in other.output
    assert "was swept with other settings (lr 0.001,0.003,30 then, 0.001,0.003 now)" in (
        other.output)
    fresh = _sweep(tiny_bases["bert"], sentiment, out, *grid)
    assert fresh.exit_code == 1 and "pass --resume" in fresh.output


def _killable(base, data, out, *extra):
    return [sys.executable, "-m", "clsx", "sweep", "--model", str(base), "--train", str(data),
            "--eval", str(data), "--output", str(out), *FIXED, "--trials", "2", "--lr",
            "1e-4:1e-2", "--epochs", "2", "--no-prune", *extra]


def test_a_killed_sweep_resumes_and_reruns_the_interrupted_trial(tiny_bases, sentiment,
                                                                 tmp_path):
    out = tmp_path / "sweep"
    command = _killable(tiny_bases["bert"], sentiment, out)
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    # Trial 1 has saved its first epoch's checkpoint: its second is still to come.
    deadline = time.monotonic() + 300
    while (not list(out.glob("trials/.001.clsx-train/checkpoint-*"))
           and process.poll() is None and time.monotonic() < deadline):
        time.sleep(0.05)
    assert process.poll() is None, "the sweep ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert [t["state"] for t in _table(out)["trials"]] == ["complete"]

    finished = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True,
                              text=True)
    assert finished.returncode == 0, finished.stderr
    assert "trial 1 was interrupted; it runs again" in finished.stderr
    trials = _table(out)["trials"]
    assert [t["state"] for t in trials] == ["complete", "interrupted", "complete"]
    assert trials[2]["params"] == trials[1]["params"]  # the killed settings, run again
    assert trials[0]["params"] != trials[1]["params"]
    assert all(1e-4 <= t["params"]["lr"] <= 1e-2 for t in trials)
    assert (out / "best" / "model.safetensors").is_file()
    assert not _leftovers(out)


@pytest.mark.parametrize("args, message", [
    (("--trials", "2", "--lr", "1e-3:1e-5"), "--lr 1e-3:1e-5 is an empty range"),
    (("--trials", "2", "--method", "lora,bogus"), "--method 'bogus' is not one of lora, full"),
    (("--trials", "2", "--method", "lora:full"), "--method takes a list of values"),
    (("--trials", "2", "--epochs", "1:2.5"), "'2.5' is not a whole number"),
    (("--trials", "2", "--lr", "-1,1e-3"), "--lr must be > 0, got -1.0"),
    (("--grid", "--lr", "1e-5:1e-3"), "--grid needs lists of values, and --lr 1e-05:0.001 "
                                      "is a range"),
    (("--lr", "1e-5,1e-3"), "give --trials N (Optuna's TPE search) or --grid"),
    (("--grid", "--trials", "2", "--lr", "1e-5,1e-3"), "one of the two"),
    (("--trials", "2", "--lr", "1e-4"), "nothing to search"),
    (("--trials", "2", "--lr", "1e-5,1e-3", "--metric", "mse"), "--metric 'mse' is not one of"),
    (("--trials", "2", "--lr", "1e-5,1e-3", "--resume"), "holds no sweep (no sweep.db)"),
])
def test_searches_that_cannot_run_fail_in_one_line(args, message, sentiment, tmp_path):
    result = _sweep(tmp_path / "no-model-needed", sentiment, tmp_path / "out", *args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()
