"""Where the model time goes: per-operator shares for the onnx, onnx-int8 (each fused and
unfused) and torch backends.

Feeds the batches clsx itself sends (its tokenizer, length-sorted batches of the default
token budget, right padding) to ONNX Runtime (fp32 and int8) with its profiler on and to
PyTorch under torch.profiler, and sums the time per operator type. Answers "what keeps the
matrix units idle": the share of GEMMs against attention, normalisation, activations, data
movement and (int8) activation quantization, and how many of the computed tokens are
padding.

    python benchmarks/profile_ops.py [--model DIR] [--workload short|long] [--rows 512]

Without --model it profiles MiniLM-L6 with an untrained head (speed does not depend on the
head). Writes benchmarks/results/profile_ops.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from clsx.artifacts.artifact import open_artifact
from clsx.inference.encoding import TextEncoder
from clsx.inference.hardware import machine_description, physical_cores
from clsx.inference.runners.base import Runner
from clsx.inference.scheduler import pad, plan_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import untrained_classifier  # noqa: E402
from report import save  # noqa: E402
from throughput import workload_texts  # noqa: E402

GEMMS = {"MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "Gemm",
         "FusedMatMul", "aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"}
TOP = 8
# ONNX graphs as clsx exports them (with ONNX Runtime's fusions) and unfused (--no-fusion).
ONNX_VARIANTS = ("onnx", "onnx-unfused", "onnx-int8", "onnx-int8-unfused")
BACKENDS = (*ONNX_VARIANTS, "torch")
CALIBRATION_ROWS = 256  # of the profiled texts, for the int8 exports


def clsx_batches(model_dir: Path, texts: list[str]) -> tuple[list, dict]:
    """The padded batches clsx sends for ``texts``, and how many of their tokens are real."""
    artifact = open_artifact(model_dir)
    window = TextEncoder(artifact.tokenizer, artifact.manifest).encode(texts)
    lengths = np.array([len(ids) for ids in window.ids])
    batches = [pad([window.ids[i] for i in batch], artifact.manifest.padding_id)
               for batch in plan_batches(lengths, Runner.batch_tokens)]
    computed = sum(ids.size for ids, _ in batches)
    return batches, {"real_tokens": int(lengths.sum()), "computed_tokens": int(computed),
                     "batches": len(batches)}


def onnx_profile(model_dir: Path, batches: list, root: Path, variant: str,
                 calibration_texts: list[str]) -> tuple[Counter, float]:
    """Microseconds per ONNX operator type over all batches, and the wall seconds (no
    warm-up: the profiler would count it). ``onnx-int8`` quantizes every MatMul (no
    agreement gate, so no fallback to fp32; ``calibration_texts`` satisfy the export, which
    refuses decoders without them): the most int8 can gain; ``-unfused`` variants keep the
    exporter's graph."""
    import onnxruntime as ort

    from clsx.export.onnx import export_onnx

    export = export_onnx(model_dir, root / variant, fmt=variant.removesuffix("-unfused"),
                         fuse=not variant.endswith("-unfused"), min_agreement=0.0,
                         overwrite=True, calibration_texts=calibration_texts).output
    options = ort.SessionOptions()
    options.intra_op_num_threads = physical_cores()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(root / "ort")
    session = ort.InferenceSession(str(export / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    for ids, mask in batches:
        session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
    seconds = time.perf_counter() - started
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    return per_op, seconds


def torch_profile(model_dir: Path, batches: list) -> tuple[Counter, float]:
    """Microseconds of self CPU time per aten operator over all batches, and wall seconds."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from clsx.inference.torch_model import load_classifier

    module = load_classifier(open_artifact(model_dir), "fp32", "cpu")
    torch.set_num_threads(physical_cores())
    tensors = [(torch.from_numpy(ids), torch.from_numpy(mask)) for ids, mask in batches]
    with torch.inference_mode():
        module(*tensors[0])
        with profile(activities=[ProfilerActivity.CPU]) as recorded:
            started = time.perf_counter()
            for ids, mask in tensors:
                module(ids, mask)
            seconds = time.perf_counter() - started
    return Counter({e.key: e.self_cpu_time_total for e in recorded.key_averages()}), seconds


def shares(per_op: Counter, seconds: float) -> dict:
    """GEMM share, the top operators' shares, and the time outside any operator."""
    total = sum(per_op.values())
    gemm = sum(us for op, us in per_op.items() if op in GEMMS)
    return {"wall_s": round(seconds, 3), "operator_s": round(total / 1e6, 3),
            "gemm_share": round(gemm / total, 3),
            "top": [[op, round(us / total, 3)] for op, us in per_op.most_common(TOP)]}


def markdown(result: dict) -> str:
    tokens = result["tokens"]
    lines = ["# Where the model time goes", "",
             f"Machine: {machine_description()}. Model `{result['model']}`, "
             f"{result['rows']} {result['workload']} texts in {tokens['batches']} clsx "
             f"batches; {tokens['real_tokens']} real tokens of {tokens['computed_tokens']} "
             f"computed (padding: {1 - tokens['real_tokens'] / tokens['computed_tokens']:.1%})"
             f". Command: `{result['command']}`.", "",
             "| backend | wall s | in operators s | GEMM share | top operators (share of "
             "operator time) |", "|---|---|---|---|---|"]
    for backend in BACKENDS:
        r = result[backend]
        top = ", ".join(f"{op} {share:.1%}" for op, share in r["top"])
        lines.append(f"| {backend} | {r['wall_s']} | {r['operator_s']} | "
                     f"{r['gemm_share']:.1%} | {top} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="clsx model directory (default: MiniLM)")
    parser.add_argument("--workload", choices=("short", "long"), default="short")
    parser.add_argument("--rows", type=int, default=4096,
                        help="texts to profile (4096 = one clsx window)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clsx-profile-") as temporary:
        root = Path(temporary)
        max_length = 512 if args.workload == "long" else 128
        model = args.model or untrained_classifier("minilm-l6", root / "minilm", max_length)
        texts, _ = workload_texts(args.workload, args.rows)
        batches, tokens = clsx_batches(model, texts)
        result = {"model": str(args.model or "minilm-l6 (untrained head)"),
                  "workload": args.workload, "rows": args.rows, "tokens": tokens,
                  "command": "python benchmarks/profile_ops.py "
                             f"--workload {args.workload} --rows {args.rows}"
                             + (f" --model {args.model}" if args.model else ""),
                  **{variant: shares(*onnx_profile(model, batches, root, variant,
                                                   texts[:CALIBRATION_ROWS]))
                     for variant in ONNX_VARIANTS},
                  "torch": shares(*torch_profile(model, batches))}
    save("profile_ops", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
