"""The whole clsx pipeline on the bundled model and the demo reviews, as a user runs it.

Train (LoRA) -> eval -> export to ONNX -> batch-predict a generated Parquet file -> bench.
Every step is a plain `clsx` command, printed before it runs.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pjson
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
TRAIN = HERE / "reviews_train.jsonl"
TEST = HERE / "reviews_test.jsonl"
# Settings that train the small demo set in about a minute on two CPU cores.
MODEL_SETTINGS = {
    "minilm-l6": ["--epochs", "3", "--batch-size", "16", "--lr", "5e-4", "--max-length", "128"],
    "smollm2-135m": ["--epochs", "2", "--batch-size", "8", "--lr", "1e-4", "--max-length", "128"],
}


def clsx(*args: object) -> None:
    """Run one clsx command the way a user would type it; stop the demo if it fails."""
    command = ["clsx", *map(str, args)]
    print(f"\n$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    if subprocess.run([sys.executable, "-m", "clsx", *command[1:]]).returncode != 0:
        sys.exit(f"demo step failed: {shlex.join(command)}")
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def write_batch_input(path: Path, rows: int) -> None:
    """A Parquet file of `rows` reviews (the demo texts, repeated) with an id column."""
    texts = pjson.read_json(TEST).column("text").to_pylist()
    texts += pjson.read_json(TRAIN).column("text").to_pylist()
    repeated = [texts[i % len(texts)] for i in range(rows)]
    pq.write_table(pa.table({"id": list(range(rows)), "review": repeated}), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="minilm-l6", choices=sorted(MODEL_SETTINGS))
    parser.add_argument("--output", type=Path, default=Path("demo-output"))
    parser.add_argument("--rows", type=int, default=10000, help="rows to batch-predict")
    args = parser.parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    model, onnx = out / "model", out / "model-onnx"

    clsx("train", "--model", args.model, "--train", TRAIN, "--eval", TEST, "--output", model,
         *MODEL_SETTINGS[args.model], "--overwrite")
    clsx("eval", "--model", model, "--data", TEST, "--json", out / "eval.json",
         "--errors", out / "errors.parquet")
    clsx("export", model, "--format", "onnx", "--output", onnx, "--overwrite")
    write_batch_input(out / "reviews.parquet", args.rows)
    clsx("batch-predict", out / "reviews.parquet", out / "predictions.parquet", "--model", onnx,
         "--text-column", "review", "--overwrite")
    clsx("bench", "--model", model, "--data", out / "reviews.parquet", "--text-column",
         "review", "--rows", "2000", "--exports-dir", out / "exports", "--json",
         out / "bench.json")
    print(f"\nDemo finished; everything is in {out}/")


if __name__ == "__main__":
    main()
