"""The student ladder: a MiniLM teacher, its static student and the static -> MiniLM cascade,
per dataset, and (with --llm-datasets) a SmolLM2 teacher and the MiniLM -> SmolLM2 cascade;
accuracy against rows/s.

    python benchmarks/ladder.py [--datasets trec,bbc,sst2] [--work DIR] [--rows 50000]
                                [--cascade-rows 20000] [--llm-datasets trec] [--llm-rows 2000]

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
5. on the --llm-datasets: SmolLM2-135M LoRA-trained on 3,000 training rows (the settings
   of benchmarks/experiments.py: 1 epoch, 128 tokens), its test accuracy and agreement
   with MiniLM, its rows/s alone and that of the MiniLM -> SmolLM2 cascade
   (`--fallback-model` SmolLM2) on `--llm-rows` texts with `--auto-formats` (the format
   search a 20,000-row job gets, on fewer rows: SmolLM2 runs some 40 rows/s here), and
   the cascade's agreement with SmolLM2 alone on the test split. BBC's long texts are too
   slow for SmolLM2 on 2 cores (a few rows/s).

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
from experiments import MINILM, SMOLLM2  # noqa: E402
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
LLM_TRAIN_ROWS = 3000
LLM_ARGS = (*SMOLLM2, "--max-length", "128")
RUNGS = {"smollm2": "smollm2", "minilm_smollm2": "minilm -> smollm2 cascade", "minilm": "minilm",
         "cascade": "static -> minilm cascade", "static": "static"}


def accuracy(model: Path, test: Path, folder: Path, name: str) -> tuple[dict, list]:
    """`clsx eval` on the test split: accuracy with its 95% interval, and the labels."""
    predictions = folder / f"{name}-predictions.parquet"
    metrics = folder / f"{name}-metrics.json"
    clsx("eval", "--model", model, "--data", test, "--json", metrics, "--predictions",
         predictions)
    labels = pq.read_table(predictions).column("predicted_label").to_pylist()
    return scored(json.loads(metrics.read_text())["accuracy"], len(labels)), labels


def scored(accuracy: float, rows: int) -> dict:
    """``accuracy`` on ``rows`` test rows with its 95% interval (normal approximation)."""
    half = 1.96 * math.sqrt(accuracy * (1 - accuracy) / rows)
    return {"accuracy": round(accuracy, 4),
            "ci95": [round(accuracy - half, 4), round(accuracy + half, 4)]}


def rows_per_s(*args: object) -> tuple[float, str]:
    """`clsx batch-predict ARGS`: its rows/s and its summary line."""
    line = clsx("batch-predict", *args, "--quiet", "--overwrite").strip().splitlines()[-1]
    return float(SUMMARY.search(line).group(1)), line


def backend_of(summary: str) -> str:
    """The backend a batch-predict summary line names."""
    return summary.split("backend ", 1)[1].split(";")[0]


def repeated_texts(test: pa.Table, rows: int, path: Path) -> Path:
    realdata.write(realdata.repeated(test.select(["text"]), rows), path)
    return path


def agreement(first: list, second: list) -> float:
    return round(sum(a == b for a, b in zip(first, second, strict=True)) / len(first), 4)


def cascade_rung(folder: Path, test: Path, gold: list, name: str, first: Path,
                 fallback: Path, source: Path, rows: int, *options: str) -> dict:
    """The cascade ``first`` -> ``fallback``: its rows/s on ``source`` (``rows`` rows) and
    the share sent; on the test split its accuracy (95% interval) and its agreement with
    ``fallback`` alone."""
    cascade = ("-m", first, "--fallback-model", fallback, *CASCADE)
    rate, line = rows_per_s(source, folder / f"{name}-out.parquet", *cascade, *options)
    share = FALLBACK_SHARE.search(line)
    texts = ("--keep-columns", "text")
    rows_per_s(test, folder / f"{name}-test.parquet", *cascade, *texts)
    rows_per_s(test, folder / f"{fallback.name}-test.parquet", "-m", fallback, *texts)
    labels = pq.read_table(folder / f"{name}-test.parquet").column("label").to_pylist()
    alone = pq.read_table(folder / f"{fallback.name}-test.parquet").column("label").to_pylist()
    return {**scored(agreement(labels, gold), len(gold)), "agreement": agreement(labels, alone),
            "with": fallback.name, "rows_per_s": rate, "rows": rows,
            "fallback_share": float(share.group(1)) / 100 if share else None}


def llm_rungs(folder: Path, paths: dict[str, Path], train: pa.Table, test: pa.Table,
              teacher: Path, teacher_labels: list, rows: int) -> dict:
    """SmolLM2 alone and the MiniLM -> SmolLM2 cascade (step 5 of the docstring)."""
    llm = folder / "smollm2"
    if not llm.exists():
        subset = folder / "llm-train.parquet"
        pq.write_table(realdata.sample(train, LLM_TRAIN_ROWS), subset)
        clsx("train", "--model", "smollm2-135m", "--train", subset, "--output", llm, *LLM_ARGS)
    score, labels = accuracy(llm, paths["test"], folder, "smollm2")
    few = repeated_texts(test, rows, folder / "few.parquet")
    rate, line = rows_per_s(few, folder / "smollm2-out.parquet", "-m", llm, "--auto-formats")
    alone = {**score, "agreement": agreement(labels, teacher_labels), "with": "minilm",
             "rows_per_s": rate, "rows": rows, "backend": backend_of(line)}
    cascade = cascade_rung(folder, paths["test"], test.column("label").to_pylist(),
                           "llm-cascade", teacher, llm, few, rows, "--auto-formats")
    return {"smollm2": alone, "minilm_smollm2": cascade}


def run(dataset: str, work: Path, rows: int, cascade_rows: int, llm_rows: int | None) -> dict:
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
    many = repeated_texts(test, rows, folder / "many.parquet")
    some = repeated_texts(test, cascade_rows, folder / "some.parquet")
    rate, line = rows_per_s(some, folder / "minilm-out.parquet", "-m", teacher)
    result["minilm"] = {**teacher_score, "rows_per_s": rate, "rows": cascade_rows,
                        "backend": backend_of(line)}
    rate, _ = rows_per_s(many, folder / "static-out.parquet", "-m", static)
    result["static"] = {**static_score, "agreement": agreement(static_labels, teacher_labels),
                        "with": "minilm", "rows_per_s": rate, "rows": rows}
    result["cascade"] = cascade_rung(folder, paths["test"], test.column("label").to_pylist(),
                                     "cascade", static, teacher, some, cascade_rows)
    if llm_rows is not None:
        result.update(llm_rungs(folder, paths, train, test, teacher, teacher_labels, llm_rows))
    for rung in RUNGS:
        if rung in result:
            result[rung]["x_minilm"] = round(result[rung]["rows_per_s"]
                                             / result["minilm"]["rows_per_s"], 2)
    for cascade in ("cascade", "minilm_smollm2"):  # against its fallback model alone
        if cascade in result:
            fallback = result[result[cascade]["with"]]["rows_per_s"]
            result[cascade]["x_fallback"] = round(result[cascade]["rows_per_s"] / fallback, 2)
    return result


def markdown(results: dict[str, dict]) -> str:
    lines = ["| dataset | rung | test accuracy (95% CI) | agreement | rows/s (rows) | "
             "x MiniLM | x its fallback alone |", "|---|---|---|---|---|---|---|"]
    for dataset, result in results.items():
        for rung in (r for r in RUNGS if r in result):
            r = result[rung]
            agree = "-" if "agreement" not in r else f"{r['agreement']:.2%} with {r['with']}"
            share = r.get("fallback_share")
            extra = "" if share is None else f" ({share:.1%} to {r['with']})"
            over_fallback = f"{r['x_fallback']}x" if "x_fallback" in r else "-"
            lines.append(
                f"| {dataset} | {RUNGS[rung]}{extra} | {r['accuracy']:.4f} ({r['ci95'][0]:.3f}-"
                f"{r['ci95'][1]:.3f}) | {agree} | {r['rows_per_s']:,.0f} ({r['rows']:,}) | "
                f"{r['x_minilm']}x | {over_fallback} |")
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for dataset, result in results.items():
        points = sorted((result[r]["rows_per_s"], result[r]["accuracy"], RUNGS[r])
                        for r in RUNGS if r in result)
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=dataset)
        for x, y, name in points:
            axes.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("rows/s, Parquet to Parquet, 2 cores (log)")
    axes.set_ylabel("test accuracy")
    axes.set_title("clsx student ladder: accuracy against rows/s")
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
    parser.add_argument("--llm-datasets", default="trec,sst2",
                        help="datasets that also get the SmolLM2 rungs ('' for none)")
    parser.add_argument("--llm-rows", type=int, default=2_000)
    args = parser.parse_args()
    llm = set(filter(None, args.llm_datasets.split(",")))
    results = {name: run(name, args.work, args.rows, args.cascade_rows,
                         args.llm_rows if name in llm else None)
               for name in args.datasets.split(",")}
    table = markdown(results)
    table += "\n\nRan as: " + "; ".join(
        f"{name} {rung} {result[rung]['backend']}" for name, result in results.items()
        for rung in ("minilm", "smollm2") if rung in result)
    print(table)
    plot(results, HERE / "results" / "ladder.png")
    report = {"machine": machine_description(), "results": results}
    save("ladder", report, f"# The student ladder\n\nMade with `python benchmarks/ladder.py "
         f"--datasets {args.datasets} --rows {args.rows} --cascade-rows {args.cascade_rows} "
         f"--llm-datasets '{args.llm_datasets}' --llm-rows {args.llm_rows}` "
         f"on {report['machine']}.\n\n{table}\n\n![ladder](ladder.png)\n")


if __name__ == "__main__":
    main()
