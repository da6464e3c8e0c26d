"""Throughput of the torch and ONNX backends, Parquet to Parquet, on real SST-2 texts.

For each model: export to ONNX (and, with --vllm DTYPE, for vLLM), `clsx batch-predict` a
file of N real texts (SST-2 sentences repeated) with --backend torch and with each export,
compare the labels of each output with torch's, then `clsx bench` (torch, onnx, onnx-int8)
on 2,000 rows. Prints a table and writes benchmarks/results/backends.{json,md}.

    python benchmarks/backends.py [--rows 100000] [--model DIR ...] [--vllm fp32|bf16]

Without --model it measures a tiny random Qwen2 classifier and a MiniLM-L6 classifier (the
bundled minilm-l6 with a fresh, untrained head: speed does not depend on the head).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clsx.artifacts.manifest import DECODER_FAMILIES
from clsx.inference.hardware import machine_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import repeated, sst2, write  # noqa: E402
from report import save  # noqa: E402

SUMMARY = re.compile(r"(\d+) rows in ([\d.]+) s: ([\d.]+) rows/s, (\d+) tokens/s")


def clsx(*args: object) -> str:
    """Run a clsx command, echo it, return its stderr+stdout."""
    command = [sys.executable, "-m", "clsx", *map(str, args)]
    print("$ clsx " + " ".join(map(str, args)), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def untrained_classifier(alias: str, directory: Path, max_length: int = 128) -> Path:
    """A bundled base model (``clsx models``) with an untrained 2-label head, saved as a clsx
    model directory: speed does not depend on the head."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from clsx.artifacts.artifact import pad_token_id, save_artifact
    from clsx.artifacts.bundled import resolve_model
    from clsx.artifacts.manifest import Manifest

    torch.manual_seed(0)
    base = resolve_model(alias)
    family = AutoConfig.from_pretrained(base).model_type
    tokenizer = AutoTokenizer.from_pretrained(base)
    labels = ("negative", "positive")
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    manifest = Manifest(family=family, labels=labels,
                        problem_type="single_label_classification", max_length=max_length,
                        pad_token_id=pad_token_id(family, tokenizer), base_model=alias)
    model.config.pad_token_id = manifest.pad_token_id
    save_artifact(model.eval(), tokenizer, directory, manifest)
    return directory


def default_models(root: Path) -> dict[str, Path]:
    """A tiny random Qwen2 classifier and MiniLM-L6 with an untrained 2-label head."""
    from clsx.testing.tiny_models import build_tiny_classifier

    tiny = build_tiny_classifier(root / "tiny-qwen2", "qwen2", labels=("negative", "positive"),
                                 max_length=128)
    return {"tiny-qwen2": tiny, "minilm-l6": untrained_classifier("minilm-l6", root / "minilm")}


def labels(path: Path) -> list:
    return pq.read_table(path, columns=["label"])["label"].to_pylist()


def measure(name: str, model: Path, data: Path, root: Path, bench_rows: int,
            vllm_dtype: str | None = None) -> dict:
    onnx = root / f"{name}-onnx"
    started = time.perf_counter()
    clsx("export", model, "--format", "onnx", "--output", onnx, "--overwrite")
    export_seconds = time.perf_counter() - started
    backends = [("torch", model), ("onnx", onnx)]
    model_type = json.loads((model / "config.json").read_text())["model_type"]
    if vllm_dtype and model_type in DECODER_FAMILIES:  # vLLM export: decoders only
        clsx("export", model, "--format", "vllm", "--dtype", vllm_dtype, "--output",
             root / f"{name}-vllm", "--overwrite")
        backends.append(("vllm", root / f"{name}-vllm"))
    runs = {}
    for backend, directory in backends:
        out = root / f"{name}-{backend}.parquet"
        log = clsx("batch-predict", data, out, "--model", directory, "--backend", backend,
                   "--overwrite", "--quiet")
        line = log.strip().splitlines()[-1]
        print("  " + line)
        rows, seconds, rows_s, tokens_s = SUMMARY.search(line).groups()
        runs[backend] = {"rows": int(rows), "seconds": float(seconds),
                         "rows_per_s": float(rows_s), "tokens_per_s": int(tokens_s),
                         "summary": line}
    reference = labels(root / f"{name}-torch.parquet")
    for backend, run in runs.items():
        other = labels(root / f"{name}-{backend}.parquet")
        run["labels_equal_torch"] = sum(
            a == b for a, b in zip(reference, other, strict=True)) / len(reference)
    bench_json = root / f"{name}-bench.json"
    table = clsx("bench", "--model", model, "--data", data, "--rows", bench_rows,
                 "--exports-dir", root / f"{name}-exports", "--json", bench_json)
    print(table)
    return {"model": name, "export_seconds": round(export_seconds, 1), "batch_predict": runs,
            "label_agreement_torch_vs_onnx": runs["onnx"]["labels_equal_torch"],
            "bench": json.loads(bench_json.read_text())["results"]}


def markdown(results: list[dict], rows: int) -> str:
    lines = [
        f"# Backends on SST-2 texts ({rows:,} rows, Parquet to Parquet)", "",
        f"Command: `python benchmarks/backends.py --rows {rows}`; machine: "
        f"{machine_description()}.", "",
        "| model | backend | rows/s | tokens/s | seconds | labels = torch |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for backend, run in r["batch_predict"].items():
            agree = run["labels_equal_torch"]
            lines.append(f"| {r['model']} | {backend} | {run['rows_per_s']:.1f} | "
                         f"{run['tokens_per_s']} | {run['seconds']:.1f} | {agree:.4%} |")
    lines += ["", "`clsx bench` (2,000 rows, same process):", "",
              "| model | variant | rows/s | x torch | agreement | max abs logit diff | "
              "peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for b in r["bench"]:
            lines.append(f"| {r['model']} | {b['variant']} | {b['rows_per_s']} | {b['speedup']} "
                         f"| {b['label_agreement']:.2%} | {b['max_abs_diff']:.2e} | "
                         f"{b['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bench-rows", type=int, default=2000)
    parser.add_argument("--model", type=Path, action="append",
                        help="merged model directory (repeatable); default: tiny + MiniLM")
    parser.add_argument("--vllm", choices=["fp32", "bf16"],
                        help="also export for vLLM in this dtype and run --backend vllm "
                             "(decoder models only; needs `make setup-vllm`)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clsx-backends-") as temporary:
        root = Path(temporary)
        texts = pa.concat_tables([sst2(split) for split in ("train", "dev", "test")])
        data = write(repeated(texts.drop_columns(["label"]), args.rows), root / "sst2.parquet")
        models = ({m.name: m for m in args.model} if args.model else default_models(root))
        results = [measure(name, path, data, root, args.bench_rows, args.vllm)
                   for name, path in models.items()]
    report = markdown(results, args.rows)
    save("backends", results, report)
    print(report)


if __name__ == "__main__":
    main()
