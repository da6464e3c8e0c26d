"""The student ladder: a MiniLM teacher, its static student and the static -> MiniLM cascade,
per dataset, accuracy against rows/s.

    python benchmarks/ladder.py [--datasets trec,bbc,sst2] [--work DIR] [--rows 50000]
                                [--cascade-rows 20000]

Per dataset, as a user would type the commands:
1. the teacher: `clsx train` MiniLM-L6 on the training split (TREC 3 epochs, BBC 2 epochs
   at 128 tokens, SST-2 1 epoch; the settings of benchmarks/experiments.py);
2. the static student: `clsx distill --student static:256` on the teacher's soft labels
   over the training split's texts (no gold labels);
3. `clsx eval` of both on the test split: accuracy with a 95% interval (normal
   approximation) and the student's agreement with the teacher;
4. Parquet to Parquet rows/s, one after the other in this run: the static student on
   `--rows` texts (the test texts repeated), MiniLM alone (`--backend auto`) and the
   cascade (`--fallback-model` MiniLM, its cut chosen for `--fallback-agreement` 0.99 with
   it) on the test texts repeated to `--cascade-rows` (20,000 by
   default: enough rows for `--backend auto`'s format search, which MiniLM alone and the
   cascade's fallback then both run); the cascade's agreement with MiniLM alone on the
   test split.

Models stay in --work (default: a folder under /tmp), so a rerun skips the training done.
Results: benchmarks/results/ladder.{json,md} and the plot benchmarks/results/ladder.png.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clsx.inference.hardware import machine_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402
from backends import clsx  # noqa: E402
from experiments import MINILM  # noqa: E402
from report import save  # noqa: E402

HERE = Path(__file__).resolve().parent
READERS = {
    "trec": lambda: (realdata.trec("train"), realdata.trec("test")),
    "bbc": lambda: realdata.split_table(realdata.bbc_news(), 0.2),
    "sst2": lambda: (realdata.sst2("train"), realdata.sst2("test")),
}
TEACHER_ARGS = {
    "trec": ("--epochs", "3", *MINILM, "--max-length", "64"),
    "bbc": ("--epochs", "2", *MINILM, "--max-length", "128", "--long-text", "truncate"),
    "sst2": ("--epochs", "1", *MINILM, "--max-length", "64"),
}
SUMMARY = re.compile(r"([\d.]+) rows/s")
FALLBACK_SHARE = re.compile(r"\((\d+\.\d)%\) sent to the fallback model")
CASCADE = ("--fallback-agreement", "0.99")


def accuracy(model: Path, test: Path, folder: Path, name: str) -> tuple[dict, list]:
    """`clsx eval` on the test split: accuracy with its 95% interval, and the labels."""
    predictions = folder / f"{name}-predictions.parquet"
    metrics = folder / f"{name}-metrics.json"
    clsx("eval", "--model", model, "--data", test, "--json", metrics, "--predictions",
         predictions)
    labels = pq.read_table(predictions).column("predicted_label").to_pylist()
    value = json.loads(metrics.read_text())["accuracy"]
    half = 1.96 * math.sqrt(value * (1 - value) / len(labels))
    return {"accuracy": round(value, 4), "ci95": [round(value - half, 4),
                                                  round(value + half, 4)]}, labels


def rows_per_s(*args: object) -> tuple[float, str]:
    """`clsx batch-predict ARGS`: its rows/s and its summary line."""
    line = clsx("batch-predict", *args, "--quiet", "--overwrite").strip().splitlines()[-1]
    return float(SUMMARY.search(line).group(1)), line


def repeated_texts(test: pa.Table, rows: int, path: Path) -> Path:
    realdata.write(realdata.repeated(test.select(["text"]), rows), path)
    return path


def run(dataset: str, work: Path, rows: int, cascade_rows: int) -> dict:
    folder = work / dataset
    folder.mkdir(parents=True, exist_ok=True)
    train, test = READERS[dataset]()
    paths = {name: folder / f"{name}.parquet" for name in ("train", "texts", "test")}
    pq.write_table(train, paths["train"])
    pq.write_table(train.select(["text"]), paths["texts"])
    pq.write_table(test, paths["test"])
    teacher, static = folder / "minilm", folder / "static"
    if not teacher.exists():
        clsx("train", "--model", "minilm-l6", "--train", paths["train"], "--output", teacher,
             *TEACHER_ARGS[dataset])
    if not static.exists():
        clsx("distill", "--teacher", teacher, "--student", "static:256", "--data",
             paths["texts"], "--output", static)
    result: dict = {"train_rows": train.num_rows, "test_rows": test.num_rows}
    teacher_score, teacher_labels = accuracy(teacher, paths["test"], folder, "minilm")
    static_score, static_labels = accuracy(static, paths["test"], folder, "static")
    agreement = sum(a == b for a, b in zip(static_labels, teacher_labels, strict=True))
    result["minilm"] = teacher_score
    result["static"] = {**static_score, "agreement_with_minilm":
                        round(agreement / len(teacher_labels), 4)}
    many = repeated_texts(test, rows, folder / "many.parquet")
    some = repeated_texts(test, cascade_rows, folder / "some.parquet")
    result["static"]["rows_per_s"], _ = rows_per_s(many, folder / "static-out.parquet",
                                                   "-m", static)
    result["static"]["rows"] = rows
    result["minilm"]["rows_per_s"], line = rows_per_s(some, folder / "minilm-out.parquet",
                                                      "-m", teacher)
    result["minilm"]["backend"] = line.split("backend ", 1)[1].split(";")[0]
    cascade_rate, line = rows_per_s(some, folder / "cascade-out.parquet", "-m", static,
                                    "--fallback-model", teacher, *CASCADE)
    share = FALLBACK_SHARE.search(line)
    # The cascade on the test split, against MiniLM alone on it: the agreement.
    test_texts = ("--keep-columns", "text")
    rows_per_s(paths["test"], folder / "cascade-test.parquet", "-m", static,
               "--fallback-model", teacher, *CASCADE, *test_texts)
    rows_per_s(paths["test"], folder / "minilm-test.parquet", "-m", teacher, *test_texts)
    cascade = pq.read_table(folder / "cascade-test.parquet").column("label").to_pylist()
    alone = pq.read_table(folder / "minilm-test.parquet").column("label").to_pylist()
    gold = test.column("label").to_pylist()
    cascade_accuracy = sum(a == b for a, b in zip(cascade, gold, strict=True)) / len(gold)
    half = 1.96 * math.sqrt(cascade_accuracy * (1 - cascade_accuracy) / len(gold))
    result["cascade"] = {
        "accuracy": round(cascade_accuracy, 4),
        "ci95": [round(cascade_accuracy - half, 4), round(cascade_accuracy + half, 4)],
        "agreement_with_minilm": round(sum(a == b for a, b in zip(cascade, alone, strict=True))
                                       / len(alone), 4),
        "rows_per_s": cascade_rate, "rows": cascade_rows,
        "fallback_share": float(share.group(1)) / 100 if share else None,
        "x_minilm": round(cascade_rate / result["minilm"]["rows_per_s"], 2)}
    result["minilm"]["rows"] = cascade_rows
    result["static"]["x_minilm"] = round(result["static"]["rows_per_s"]
                                         / result["minilm"]["rows_per_s"], 1)
    return result


def markdown(results: dict[str, dict]) -> str:
    lines = ["| dataset | rung | test accuracy (95% CI) | agreement with MiniLM | rows/s | "
             "x MiniLM |", "|---|---|---|---|---|---|"]
    for dataset, result in results.items():
        for rung in ("minilm", "static", "cascade"):
            r = result[rung]
            agree = r.get("agreement_with_minilm")
            extra = (f" ({r['fallback_share']:.1%} to MiniLM)" if rung == "cascade"
                     and r.get("fallback_share") is not None else "")
            lines.append(
                f"| {dataset} | {rung}{extra} | {r['accuracy']:.4f} ({r['ci95'][0]:.3f}-"
                f"{r['ci95'][1]:.3f}) | {'-' if agree is None else f'{agree:.2%}'} | "
                f"{r['rows_per_s']:,.0f} | {r.get('x_minilm', 1.0)}x |")
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for dataset, result in results.items():
        points = [(result[r]["rows_per_s"], result[r]["accuracy"], r)
                  for r in ("minilm", "cascade", "static")]
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=dataset)
        for x, y, name in points:
            axes.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("rows/s, Parquet to Parquet, 2 cores (log)")
    axes.set_ylabel("test accuracy")
    axes.set_title("clsx student ladder: MiniLM, static -> MiniLM cascade, static")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="trec,bbc,sst2")
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "clsx-ladder")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--cascade-rows", type=int, default=20_000)
    args = parser.parse_args()
    results = {name: run(name, args.work, args.rows, args.cascade_rows)
               for name in args.datasets.split(",")}
    table = markdown(results)
    table += "\n\nMiniLM ran as: " + "; ".join(
        f"{name} {result['minilm']['backend']}" for name, result in results.items())
    print(table)
    plot(results, HERE / "results" / "ladder.png")
    report = {"machine": machine_description(), "results": results}
    save("ladder", report, f"# The student ladder\n\nMade with `python benchmarks/ladder.py "
         f"--datasets {args.datasets} --rows {args.rows} --cascade-rows {args.cascade_rows}` "
         f"on {report['machine']}.\n\n{table}\n\n![ladder](ladder.png)\n")


if __name__ == "__main__":
    main()
