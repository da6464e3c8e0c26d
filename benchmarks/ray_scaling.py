"""Throughput of `batch-predict --engine ray` with 1 and 2 workers against the local engine.

Same file, same model, one run: the local engine (all cores in one process), then a local
Ray instance with 1 and with 2 model replicas (one thread each). Prints a table and writes
benchmarks/results/ray_scaling.{json,md}.

    python benchmarks/ray_scaling.py [--rows 50000] [--model DIR]

Without --model it uses a tiny random Qwen2 classifier exported to ONNX.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from clsx.inference.hardware import machine_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import default_model, write_input  # noqa: E402
from report import save  # noqa: E402

SUMMARY = re.compile(r"(\d+) rows in ([\d.]+) s: ([\d.]+) rows/s")


def run(source: Path, output: Path, model: Path, *extra: str) -> dict:
    command = [sys.executable, "-m", "clsx", "batch-predict", str(source), str(output), "-m",
               str(model), "--quiet", *extra]
    print("$ clsx " + " ".join(command[3:]), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed:\n{done.stderr}")
    rows, seconds, rate = SUMMARY.search(done.stderr).groups()
    return {"rows": int(rows), "seconds": float(seconds), "rows_per_s": float(rate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model or default_model(root)
        source = root / "input.parquet"
        write_input(source, args.rows)
        results = {"local engine": run(source, root / "local.parquet", model)}
        for workers in (1, 2):
            results[f"ray, {workers} worker(s)"] = run(
                source, root / f"ray-{workers}", model, "--engine", "ray", "--num-workers",
                str(workers), "--preserve-order")
    lines = ["| engine | rows | seconds (incl. start-up) | rows/s | vs local |",
             "|---|---|---|---|---|"]
    base = results["local engine"]["rows_per_s"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['rows']:,} | {r['seconds']} | {r['rows_per_s']} | "
                     f"{r['rows_per_s'] / base:.2f}x |")
    table = "\n".join(lines)
    print(table)
    report = {"rows": args.rows, "model": str(args.model or "tiny random Qwen2 (ONNX)"),
              "machine": machine_description(), "results": results}
    save("ray_scaling", report, f"# batch-predict: local engine vs Ray workers\n\nMade with "
         f"`python benchmarks/ray_scaling.py --rows {args.rows}` on {report['machine']}.\n\n"
         f"{table}\n")


if __name__ == "__main__":
    main()
