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
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from clsx.bench import machine_description

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
    eval_args: tuple[str, ...] = field(default=())


def sst2():
    return realdata.sst2("train"), realdata.sst2("test")


def trec():
    return realdata.trec("train"), realdata.trec("test")


def disaster():
    return realdata.split_table(realdata.disaster_tweets(), 0.2)


def bbc():
    return realdata.split_table(realdata.bbc_news(), 0.2)


def goemotions():
    return realdata.goemotions("train"), realdata.goemotions("test")


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
    Experiment("goemotions-minilm-full", "goemotions", "minilm-l6",
               (*MINILM, "--lr", "5e-5", "--method", "full", "--problem-type", "multi_label"),
               train_rows=10000, eval_args=("--tune-threshold",)),
)}


def run(experiment: Experiment, root: Path) -> dict:
    train_table, test_table = DATA[experiment.data]()
    train_table = realdata.sample(train_table, experiment.train_rows)
    train_path = root / f"{experiment.name}-train.parquet"
    test_path = root / f"{experiment.name}-test.parquet"
    pq.write_table(train_table, train_path)
    pq.write_table(test_table, test_path)
    model = root / experiment.name
    train_command = ["train", "--model", experiment.model, "--train", str(train_path),
                     "--output", str(model), *experiment.train_args]
    print("$ clsx " + " ".join(train_command), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clsx", *train_command], check=True)
    minutes = (time.perf_counter() - started) / 60
    metrics_path = root / f"{experiment.name}-metrics.json"
    eval_command = ["eval", "--model", str(model), "--data", str(test_path), "--json",
                    str(metrics_path), *experiment.eval_args]
    print("$ clsx " + " ".join(eval_command), flush=True)
    subprocess.run([sys.executable, "-m", "clsx", *eval_command], check=True)
    metrics = json.loads(metrics_path.read_text())
    epochs = float(experiment.train_args[experiment.train_args.index("--epochs") + 1])
    return {
        "experiment": experiment.name, "model": experiment.model, "data": experiment.data,
        "train_rows": train_table.num_rows, "test_rows": test_table.num_rows,
        "accuracy": metrics.get("accuracy", metrics.get("subset_accuracy")),
        "macro_f1": metrics["macro_f1"], "train_minutes": round(minutes, 2),
        "train_examples_per_s": round(train_table.num_rows * epochs / (minutes * 60), 1),
        "command": "clsx " + " ".join(train_command[:1] + train_command[3:4] + ["..."] +
                                      list(experiment.train_args)),
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
    lines += ["", "Train arguments per experiment: see `EXPERIMENTS` in benchmarks/accuracy.py."]
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
