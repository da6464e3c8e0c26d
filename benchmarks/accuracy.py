"""Accuracy of `clsx train` + `clsx eval` on the shared real datasets, per model and method.

Each experiment writes its train/test split to a temporary folder, runs `clsx train` and
`clsx eval --json` as a user would, and records accuracy, macro-F1, training minutes and
training examples/s. Results go to benchmarks/results/accuracy.json and RESULTS.md.

    python benchmarks/accuracy.py --experiments sst2-minilm-lora,sst2-smollm2-lora
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from clsx.inference.hardware import machine_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Experiment:
    name: str
    data: str
    model: str
    train_args: tuple[str, ...]
    train_rows: int | None = None  # subsample the training split to keep minutes, not hours
    eval_args: tuple[str, ...] = ()  # extra `clsx eval` options (e.g. a long-text override)
    test_rows: int | None = None  # subsample the test split too (bootstrap intervals say so)


# Each returns (train, test, dev or None); without dev, clsx train holds out its own split.
def sst2():
    return realdata.sst2("train"), realdata.sst2("test"), None


def trec():
    return realdata.trec("train"), realdata.trec("test"), None


def disaster():
    return (*realdata.split_table(realdata.disaster_tweets(), 0.2), None)


def bbc():
    return (*realdata.split_table(realdata.bbc_news(), 0.2), None)


def goemotions():
    return realdata.goemotions("train"), realdata.goemotions("test"), realdata.goemotions("dev")


DATA = {"sst2": sst2, "trec": trec, "disaster": disaster, "bbc": bbc, "goemotions": goemotions}
MINILM = ("--epochs", "3", "--batch-size", "16", "--max-length", "128")
EXPERIMENTS = {e.name: e for e in (
    Experiment("sst2-minilm-lora", "sst2", "minilm-l6", (*MINILM, "--lr", "5e-4")),
    Experiment("sst2-minilm-full", "sst2", "minilm-l6", (*MINILM, "--lr", "5e-5", "--method",
                                                          "full")),
    Experiment("sst2-smollm2-lora", "sst2", "smollm2-135m",
               ("--epochs", "1", "--batch-size", "8", "--lr", "1e-4", "--max-length", "128"),
               train_rows=3000),
    Experiment("trec-minilm-lora", "trec", "minilm-l6", (*MINILM, "--lr", "5e-4")),
    Experiment("disaster-minilm-lora", "disaster", "minilm-l6", (*MINILM, "--lr", "5e-4")),
    Experiment("bbc-minilm-lora", "bbc", "minilm-l6",
               ("--epochs", "3", "--batch-size", "8", "--max-length", "512", "--lr", "5e-4")),
    # clsx train tunes one threshold per label on the dev split (its --eval) and stores them
    # in clsx.json; eval on test applies them.
    Experiment("goemotions-minilm-full", "goemotions", "minilm-l6",
               ("--epochs", "3", "--batch-size", "32", "--max-length", "64", "--lr", "1e-4",
                "--method", "full", "--problem-type", "multi_label")),
)}


def clsx(*args: object) -> None:
    command = [str(a) for a in args]
    print("$ clsx " + " ".join(command), flush=True)
    subprocess.run([sys.executable, "-m", "clsx", *command], check=True)


def run(experiment: Experiment, root: Path) -> dict:
    train_table, test_table, dev_table = DATA[experiment.data]()
    train_table = realdata.sample(train_table, experiment.train_rows)
    test_table = realdata.sample(test_table, experiment.test_rows)
    paths = {split: root / f"{experiment.name}-{split}.parquet"
             for split in ("train", "test", "dev")}
    pq.write_table(train_table, paths["train"])
    pq.write_table(test_table, paths["test"])
    eval_args = []
    if dev_table is not None:
        pq.write_table(dev_table, paths["dev"])
        eval_args = ["--eval", paths["dev"]]
    model = root / experiment.name
    started = time.perf_counter()
    clsx("train", "--model", experiment.model, "--train", paths["train"], *eval_args,
         "--output", model, *experiment.train_args)
    minutes = (time.perf_counter() - started) / 60
    metrics_path = root / f"{experiment.name}-metrics.json"
    predictions = root / f"{experiment.name}-predictions.parquet"
    clsx("eval", "--model", model, "--data", paths["test"], "--json", metrics_path,
         "--predictions", predictions, *experiment.eval_args)
    metrics = json.loads(metrics_path.read_text())
    epochs = float(experiment.train_args[experiment.train_args.index("--epochs") + 1])
    return {
        "experiment": experiment.name, "model": experiment.model, "data": experiment.data,
        "train_rows": train_table.num_rows, "test_rows": test_table.num_rows,
        "accuracy": metrics.get("accuracy", metrics.get("subset_accuracy")),
        "macro_f1": metrics["macro_f1"],
        "threshold": metrics.get("threshold", metrics.get("thresholds")),
        # Calibration of the scores on the test rows, with and without the fitted temperatures.
        **{key: metrics.get(key) for key in ("ece", "ece_uncalibrated", "brier",
                                             "brier_uncalibrated")},
        "train_minutes": round(minutes, 2),
        "train_examples_per_s": round(train_table.num_rows * epochs / (minutes * 60), 1),
        "train_args": list(experiment.train_args),
        "eval_args": list(experiment.eval_args),
        "predictions": str(predictions),  # in ``root``: read it before ``root`` goes
    }


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Accuracy of clsx train on the shared datasets", "",
             f"Made with `{command}` on {machine_description()} (no GPU).", "",
             "| experiment | model | train rows | test rows | accuracy | macro-F1 | "
             "train min | train ex/s |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['experiment']} | {r['model']} | {r['train_rows']} | "
                     f"{r['test_rows']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
                     f"{r['train_minutes']:.1f} | {r['train_examples_per_s']} |")
    lines += ["", "Multi-label accuracy is subset accuracy, at the per-label thresholds clsx "
              "train tuned on the dev split. `train rows` counts the training file; without a "
              "dev split clsx train holds out 10% of it for epoch selection. Train arguments "
              "per experiment: `EXPERIMENTS` in benchmarks/accuracy.py."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default="sst2-minilm-lora,sst2-smollm2-lora",
                        help=f"comma-separated, from: {', '.join(EXPERIMENTS)}")
    args = parser.parse_args()
    chosen = [EXPERIMENTS[name] for name in args.experiments.split(",")]
    results_path = HERE / "results" / "accuracy.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else []
    with tempfile.TemporaryDirectory(prefix="clsx-accuracy-") as temporary:
        fresh = [run(experiment, Path(temporary)) for experiment in chosen]
    for result in fresh:
        del result["predictions"]  # a file of the temporary folder
    names = {r["experiment"] for r in fresh}
    results = [r for r in previous if r["experiment"] not in names] + fresh
    results_path.parent.mkdir(exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    command = "python benchmarks/accuracy.py --experiments " + ",".join(
        r["experiment"] for r in results)
    (HERE / "RESULTS.md").write_text(markdown(results, command))
    print(markdown(results, command))


if __name__ == "__main__":
    main()
