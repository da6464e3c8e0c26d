"""Parquet -> Parquet throughput from and to object storage against local files.

Same model, same rows, one run: `clsx batch-predict` from a local file to a local file, then
from `s3://` to `s3://` (one file, and `--output-format dataset`) on a local S3-compatible
server (moto's, started here on 127.0.0.1; it shares this machine's cores with clsx, which a
real S3 does not). rows/s is the summary line's (model loading excluded; reading, writing
the parts, assembling OUT and the clean-up included). The three runs of a model alternate,
`--repeats` times, and each keeps its best: other load on the machine then hits every
configuration alike. Prints a table and writes benchmarks/results/storage.{json,md}.

    python benchmarks/storage.py [--rows 20000] [--repeats 2] [--models minilm,tiny]

minilm: the bundled MiniLM-L6 with an untrained 2-label head (torch fp32); tiny: a tiny
random Qwen2 classifier exported to ONNX, so fast that storage costs show most.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from clsx.inference.hardware import machine_description
from clsx.testing.s3_server import FAKE_CREDENTIALS, S3Server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import untrained_classifier  # noqa: E402
from memory import default_model, write_input  # noqa: E402
from ray_scaling import run  # noqa: E402
from report import save  # noqa: E402

PART_ROWS = "5000"  # several parts per run, as a long job commits them
MODELS = {"minilm": lambda root: untrained_classifier("minilm-l6", root / "minilm"),
          "tiny": default_model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="minilm,tiny")
    args = parser.parse_args()
    os.environ.update(FAKE_CREDENTIALS)
    server = S3Server().start()
    server.create_bucket()
    results: dict[str, dict[str, dict]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            source = root / "input.parquet"
            write_input(source, args.rows)
            pafs.copy_files(str(source), f"{server.bucket}/input.parquet",
                            destination_filesystem=server.filesystem())
            remote = server.uri("input.parquet")
            for name in args.models.split(","):
                model = MODELS[name](root)
                common = ("--part-rows", PART_ROWS, "--overwrite",
                          *(("--dtype", "fp32") if name == "minilm" else ()))
                configurations = {
                    "local file -> local file": (source, root / f"{name}.parquet", *common),
                    "s3 -> s3 file": (remote, server.uri(f"{name}.parquet"), *common,
                                      *server.options),
                    "s3 -> s3 dataset": (remote, server.uri(f"{name}-dataset"), *common,
                                         "--output-format", "dataset", *server.options),
                }
                runs: dict[str, list[dict]] = {storage: [] for storage in configurations}
                for _ in range(args.repeats):
                    for storage, (source_, output, *extra) in configurations.items():
                        runs[storage].append(run(source_, output, model, *extra))
                results[name] = {storage: {**max(done, key=lambda r: r["rows_per_s"]),
                                           "all_rows_per_s": [r["rows_per_s"] for r in done]}
                                 for storage, done in runs.items()}
    finally:
        server.stop()
    lines = ["| model | storage | rows | seconds (best) | rows/s (best) | every run | "
             "vs local files |", "|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        base = runs["local file -> local file"]["rows_per_s"]
        for storage, r in runs.items():
            r["vs_local"] = round(r["rows_per_s"] / base, 3)
            lines.append(f"| {name} | {storage} | {r['rows']:,} | {r['seconds']} | "
                         f"{r['rows_per_s']} | {', '.join(map(str, r['all_rows_per_s']))} | "
                         f"{r['vs_local']:.1%} |")
    machine = machine_description()
    table = "\n".join(lines)
    print(table)
    print(f"machine: {machine}")
    save("storage", {"machine": machine, "rows": args.rows, "part_rows": int(PART_ROWS),
                     "repeats": args.repeats,
                     "server": "moto (ThreadedMotoServer) on 127.0.0.1, same machine",
                     "results": results},
         f"{table}\n\nmachine: {machine}; S3 = moto on 127.0.0.1 (same cores)\n")


if __name__ == "__main__":
    main()
