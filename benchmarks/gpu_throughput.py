"""clsx's torch paths on a GPU against the HF pipeline, side by side on the same rows.

    bash benchmarks/gpu_check.sh                    # on a lent CUDA machine: tests, then this
    python benchmarks/gpu_throughput.py --out DIR   # this alone
    python benchmarks/gpu_throughput.py --device cpu --scale 0.01   # a dry run anywhere

A lent GPU machine has no model weights and no shared datasets, and fetches nothing. So the
models are random classifiers with the shapes of real ones (speed depends on the shape, not
on the weights; the heads are wide so that labels are decided by clear margins) and the
texts are synthetic: short (5 to 60 words) and long (300 to 700 words, cut at 512 tokens).

Per model and workload, one run measures the user's baseline, HF
``pipeline("text-classification", batch_size=32)`` in fp32, the same in bf16, and clsx's
torch backend in fp32, bf16 and fp16, model-only (``Classifier.predict_all``) and Parquet to
Parquet (``clsx batch-predict`` in a subprocess, ``--backend auto``: the dtype it picks). It
reports rows/s, tokens/s, x HF fp32, label agreement with HF fp32, and the share of the bf16
matmul peak measured in the same run (2 x non-embedding parameters x tokens/s), and writes
gpu_throughput.{json,md} into --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clsx.testing.tiny_models import CORPUS, build_tiny_classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import RESULTS  # noqa: E402
from throughput import (  # noqa: E402
    LONG_TOKENS,
    WARM_UP_ROWS,
    clsx_model_only,
    clsx_parquet,
    hf_pipeline,
    matmul_peak,
    non_embedding_params,
)

# family and config sizes of the real models (their head_dim is 64, like theirs)
SHAPES = {
    "minilm-l6": ("bert", dict(hidden_size=384, num_attention_heads=6, num_hidden_layers=6,
                               intermediate_size=1536)),
    "smollm2-135m": ("llama", dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                                   num_hidden_layers=30, intermediate_size=1536)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, num_attention_heads=14, num_key_value_heads=2,
                                   num_hidden_layers=24, intermediate_size=4864)),
}
ROWS = {"short": 16_384, "long": 2_048}
WORDS = {"short": (5, 60), "long": (300, 700)}
LABELS = ("a", "b", "c", "d")


def synthetic_texts(workload: str, rows: int, seed: int = 0) -> list[str]:
    """Texts of the workload's word counts, drawn from the tiny tokenizer's corpus."""
    words = " ".join(CORPUS).split()
    draw = random.Random(seed)
    low, high = WORDS[workload]
    return [" ".join(draw.choices(words, k=draw.randint(low, high))) for _ in range(rows)]


def measure(name: str, root: Path, device: str, scale: float) -> list[dict]:
    """Every system on both workloads for one model shape; rows of the result table."""
    family, sizes = SHAPES[name]
    model = build_tiny_classifier(root / name, family, labels=LABELS, max_length=LONG_TOKENS,
                                  sizes=sizes)
    params = non_embedding_params(model)
    rows: list[dict] = []
    for workload in ("short", "long"):
        for system, dtype, p2p, result in systems(model, workload, root, device, scale):
            result["labels"] = [x if isinstance(x, int) else LABELS.index(x)
                                for x in result["labels"]]
            result.update(model=name, workload=workload, system=system, dtype=dtype,
                          parquet_to_parquet=p2p, params=params)
            rows.append(result)
            print(f"  {name} {workload} {system} {dtype}: {result['rows_per_s']} rows/s",
                  flush=True)
    return rows


def systems(model: Path, workload: str, root: Path, device: str, scale: float
            ) -> Iterator[tuple[str, str, bool, dict]]:
    """(system, dtype, Parquet to Parquet, measurement) of each system, one after another."""
    count = max(64, int(ROWS[workload] * scale))
    texts = synthetic_texts(workload, count + WARM_UP_ROWS)
    texts, warm_up = texts[:count], texts[count:]
    max_length = LONG_TOKENS if workload == "long" else 128
    for dtype in ("fp32", "bf16"):
        yield "HF pipeline", dtype, False, hf_pipeline(model, texts, warm_up, dtype,
                                                       max_length, device)
    for dtype in ("fp32", "bf16", "fp16") if device == "cuda" else ("fp32",):
        yield "clsx torch", dtype, False, clsx_model_only(model, "torch", texts, warm_up,
                                                          max_length, dtype, device)
    data = root / f"{model.name}-{workload}.parquet"
    pq.write_table(pa.table({"text": texts}), data)
    yield "clsx auto", "auto", True, clsx_parquet(model, "auto", data, root / "out.parquet",
                                                  max_length, None, device)


def finish(rows: list[dict], peak_gflops: float) -> list[dict]:
    """Ratios and agreement against HF fp32 of the same model and workload; labels dropped."""
    for row in rows:
        base = next(r for r in rows if (r["model"], r["workload"], r["system"], r["dtype"]) ==
                    (row["model"], row["workload"], "HF pipeline", "fp32"))
        row["x_hf_fp32"] = round(row["rows_per_s"] / base["rows_per_s"], 2)
        same = sum(a == b for a, b in zip(row["labels"], base["labels"], strict=True))
        row["agreement"] = round(same / len(base["labels"]), 4)
        row["pct_bf16_peak"] = round(100 * 2 * row["params"] * row["tokens_per_s"]
                                     / (peak_gflops * 1e9), 1)
    for row in rows:
        del row["labels"]
    return rows


def markdown(rows: list[dict], peak_gflops: float, device: str, command: str) -> str:
    lines = [f"# GPU throughput ({device}; bf16 matmul peak {peak_gflops:,.0f} GFLOP/s)", "",
             f"`{command}`. Random classifiers of the real shapes, synthetic texts (see the "
             "script's docstring).", "",
             "| model | workload | system | dtype | P2P | rows | rows/s | tokens/s | x HF fp32 "
             "| agreement | % bf16 peak |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['workload']} | {r['system']} | {r['dtype']} | "
              f"{'yes' if r['parquet_to_parquet'] else 'no'} | {r['rows']} | {r['rows_per_s']} "
              f"| {r['tokens_per_s']} | {r['x_hf_fp32']} | {r['agreement']:.2%} | "
              f"{r['pct_bf16_peak']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SHAPES), help=f"from: {', '.join(SHAPES)}")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply ROWS by this")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    peak = matmul_peak("bf16", size=8192 if args.device == "cuda" else 1024, seconds=2.0,
                       device=args.device)
    print(f"bf16 matmul peak: {peak:,.0f} GFLOP/s", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="clsx-gpu-") as temporary:
        for name in args.models.split(","):
            rows += measure(name, Path(temporary), args.device, args.scale)
            table = finish([dict(r) for r in rows], peak)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "gpu_throughput.json").write_text(json.dumps(
                {"device": args.device, "bf16_peak_gflops": round(peak), "rows": table},
                indent=2) + "\n")
            report = markdown(table, peak, args.device, "python " + " ".join(sys.argv))
            (args.out / "gpu_throughput.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
