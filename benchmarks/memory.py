"""Peak memory of `clsx batch-predict` over a very large input: bounded and flat.

Builds a Parquet file of N rows (real SST-2 sentences, repeated, written in row groups so
that building it needs little memory), measures the model's footprint (a process that only
opens the model), then runs `clsx batch-predict` on the file while sampling the RSS of the
process every second. Prints a table and writes benchmarks/results/memory.{json,md}.

    python benchmarks/memory.py [--rows 10000000] [--model DIR] [--backend onnx]

Without --model it uses a tiny random Qwen2 classifier exported to ONNX (memory behaviour does
not depend on the weights; a small model keeps 10M rows within an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from clsx.inference.hardware import machine_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import sst2  # noqa: E402
from report import save  # noqa: E402

ROW_GROUP = 100_000
FOOTPRINT = (
    "import sys, psutil; from clsx.inference.classifier import Classifier; "
    "c = Classifier.open(sys.argv[1], sys.argv[2]); c.predict(['warm up the model once']); "
    "print(psutil.Process().memory_info().rss)"
)


def write_input(path: Path, rows: int) -> None:
    """``rows`` SST-2 sentences, repeated, with an ``id`` column, one row group at a time."""
    texts = sst2("train").column("text")
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())])) as out:
        for start in range(0, rows, ROW_GROUP):
            size = min(ROW_GROUP, rows - start)
            picks = pa.array([(start + i) % len(texts) for i in range(size)])
            out.write_table(pa.table({"id": pa.array(range(start, start + size)),
                                      "text": texts.take(picks)}))


def footprint(model: Path, backend: str) -> int:
    """RSS of a process that has opened the model and classified one text."""
    done = subprocess.run([sys.executable, "-c", FOOTPRINT, str(model), backend],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def sampled_run(command: list[str]) -> tuple[list[tuple[float, int]], float, str]:
    """Run ``command``, sampling its RSS (with any children) each second."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    samples = []
    while process.poll() is None:
        try:
            rss = watched.memory_info().rss + sum(
                child.memory_info().rss for child in watched.children(recursive=True))
        except psutil.NoSuchProcess:
            break
        samples.append((time.perf_counter() - started, rss))
        time.sleep(1.0)
    stderr = process.stderr.read()
    if process.wait() != 0:
        raise SystemExit(f"batch-predict failed:\n{stderr}")
    return samples, time.perf_counter() - started, stderr.strip().splitlines()[-1]


def default_model(root: Path) -> Path:
    from clsx.export.onnx import export_onnx
    from clsx.testing.tiny_models import build_tiny_classifier

    model = build_tiny_classifier(root / "tiny-qwen2", "qwen2", labels=("negative", "positive"))
    return export_onnx(model, root / "tiny-qwen2-onnx").output


def summarise(samples: list[tuple[float, int]], base: int) -> dict:
    """Peak, and the peak of each tenth of the run: flat means the tenths stay level."""
    mib = 1 << 20
    tenths = []
    for k in range(10):
        window = [rss for t, rss in samples
                  if k / 10 <= t / samples[-1][0] <= (k + 1) / 10] or [0]
        tenths.append(round(max(window) / mib))
    peak = max(rss for _, rss in samples)
    return {"footprint_mib": round(base / mib), "peak_mib": round(peak / mib),
            "peak_over_footprint_mib": round((peak - base) / mib), "peak_by_tenth_mib": tenths,
            "growth_second_half_mib": max(tenths[5:]) - max(tenths[1:5])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--max-length", type=int, default=8,
                        help="Truncation for the run (short keeps 10M rows affordable).")
    parser.add_argument("--workdir", type=Path, help="Keep the input and output here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        model = args.model or default_model(root)
        source = root / "input.parquet"
        print(f"writing {args.rows} rows to {source} ...", flush=True)
        write_input(source, args.rows)
        base = footprint(model, args.backend)
        command = [sys.executable, "-m", "clsx", "batch-predict", str(source),
                   str(root / "output.parquet"), "-m", str(model), "--backend", args.backend,
                   "--max-length", str(args.max_length), "--quiet"]
        print("$ " + " ".join(command[2:]), flush=True)
        samples, seconds, summary = sampled_run(command)
    result = {"rows": args.rows, "model": str(args.model or "tiny random Qwen2 (ONNX)"),
              "backend": args.backend, "max_length": args.max_length,
              "seconds": round(seconds, 1), "rows_per_s": round(args.rows / seconds, 1),
              "summary": summary, "machine": machine_description(),
              **summarise(samples, base), "samples": [(round(t, 1), rss) for t, rss in samples]}
    table = "\n".join([
        "| rows | model footprint MiB | peak RSS MiB | peak - footprint MiB | "
        "growth 2nd half MiB | rows/s |", "|---|---|---|---|---|---|",
        f"| {args.rows:,} | {result['footprint_mib']} | {result['peak_mib']} | "
        f"{result['peak_over_footprint_mib']} | {result['growth_second_half_mib']} | "
        f"{result['rows_per_s']} |", "",
        f"Peak RSS per tenth of the run (MiB): {result['peak_by_tenth_mib']}",
    ])
    print(table)
    save("memory", result, f"# batch-predict memory on {args.rows:,} rows\n\nMade with `python "
         f"benchmarks/memory.py --rows {args.rows}` on {result['machine']}.\n\n{table}\n")


if __name__ == "__main__":
    main()
