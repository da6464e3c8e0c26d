"""ONNX Runtime's int8 options on trained classifiers: which keeps the labels users get, and
how fast it runs, side by side with the fp32 ONNX graph and PyTorch fp32.

For each ``--model NAME=DIR:DATASET`` it exports the fp32 graph (with the int8 fusion set,
the graph ``clsx export --format onnx-int8`` quantizes), quantizes it with each scheme, and
runs every variant through the Classifier users run (tokenizer, batching, thresholds) on
``--eval-rows`` real texts that no quantizer saw; static schemes and the gate calibrate on
``--calibration-rows`` other texts. ``agreement`` is the share of texts whose labels (argmax;
the model's thresholds for multi-label) equal the fp32 ONNX graph's. Rounds alternate the
variants' order; rows/s is the best round.

    python benchmarks/int8_options.py --model minilm-sst2=DIR:sst2 [--schemes 'a;b'] \
        [--fusion-model minilm-sst2=DIR:sst2] [--name int8_options] [--report-only]

``--fusion-model`` also compares the graphs quantized with the shipped scheme: unfused, the
full fusion set (BERT's packed-QKV ``Attention``, left fp32 by the quantizer) and the int8
fusion set, on short texts and on BBC news cut at 512 tokens. Each invocation adds its run
to benchmarks/results/NAME.json; NAME.md shows them all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from clsx.artifacts.artifact import ONNX_FILE, open_artifact
from clsx.export.common import open_export
from clsx.export.fusion import FULL, INT8, fuse_for_ort
from clsx.export.onnx import export_onnx
from clsx.inference.classifier import Classifier
from clsx.inference.encoding import TextEncoder
from clsx.inference.hardware import cpu_flags as hardware_flags
from clsx.inference.hardware import machine_description, physical_cores
from clsx.inference.runners import RunnerOptions
from clsx.inference.scheduler import pad
from clsx.quality.parity import compare

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402
from report import RESULTS, save  # noqa: E402

CPU = RunnerOptions(device="cpu")
DISTILL = Path("/tmp/clsx-distill")
PRECISION_KEY = "session.x64quantprecision"
CALIBRATION_BATCH = 32
UNFUSED = "unfused"


@dataclass(frozen=True)
class Scheme:
    """One way to quantize: ORT's dynamic or static (QDQ) quantizer and its settings."""

    static: bool
    weight: str = "QInt8"
    activation: str = "QUInt8"
    reduce_range: bool = False
    method: str = "MinMax"
    sensitive_fp32: bool = False
    smooth_quant: bool = False
    session: dict[str, str] = field(default_factory=dict)


SCHEMES = {
    "dyn s8 7-bit (default)": Scheme(False, reduce_range=True),
    "dyn s8 7-bit, ffn-out+head fp32 (fallback)": Scheme(False, reduce_range=True,
                                                              sensitive_fp32=True),
    "dyn s8 8-bit": Scheme(False),
    "dyn s8 8-bit + x64quantprecision": Scheme(False, session={PRECISION_KEY: "1"}),
    "dyn s8 8-bit, ffn-out+head fp32": Scheme(False, sensitive_fp32=True),
    "dyn u8u8 8-bit": Scheme(False, weight="QUInt8"),
    "static QDQ u8s8 MinMax": Scheme(True),
    "static QDQ s8s8 MinMax": Scheme(True, activation="QInt8"),
    "static QDQ u8s8 Percentile": Scheme(True, method="Percentile"),
    "static QDQ u8s8 Entropy": Scheme(True, method="Entropy"),
    "static QDQ u8s8 MinMax, ffn-out+head fp32": Scheme(True, sensitive_fp32=True),
    "static QDQ u8s8 MinMax + SmoothQuant": Scheme(True, smooth_quant=True),
}


def texts_for(dataset: str, rows: int, calibration_rows: int) -> tuple[list[str], list[str]]:
    """(eval texts, calibration texts) of ``dataset``: disjoint, and the eval texts unseen in
    training where the dataset has such rows."""
    if dataset == "sst2":
        evaluation = realdata.sst2("test")["text"].to_pylist() + \
            realdata.sst2("dev")["text"].to_pylist()
        calibration = realdata.sample(realdata.sst2("train"), calibration_rows)
    elif dataset == "trec":  # the distillation teacher trained on labelled.parquet only
        evaluation = pq.read_table(DISTILL / "trec/unlabelled.parquet")["text"].to_pylist() + \
            pq.read_table(DISTILL / "trec/test.parquet")["text"].to_pylist()
        calibration = realdata.sample(pq.read_table(DISTILL / "trec/labelled.parquet"),
                                      calibration_rows)
    elif dataset == "goemotions":  # trained on train rows, thresholds on dev[:1000]
        evaluation = realdata.goemotions("test")["text"].to_pylist()
        calibration = realdata.sample(realdata.goemotions("dev").slice(1000), calibration_rows)
    else:
        raise SystemExit(f"unknown dataset {dataset}")
    return evaluation[:rows], calibration["text"].to_pylist()


def long_texts(rows: int) -> list[str]:
    """BBC news articles (clsx cuts them at the model's 512 tokens)."""
    return realdata.sample(realdata.bbc_news(), rows)["text"].to_pylist()


def fp32_graph(model_dir: Path, root: Path, fusion_set: str | None) -> Path:
    """An fp32 export directory of ``model_dir`` whose graph carries ``fusion_set`` (None:
    the exporter's unfused graph)."""
    directory = root / f"fp32-{fusion_set or 'unfused'}"
    export_onnx(model_dir, directory, fmt="onnx", fuse=False, overwrite=True)
    if fusion_set:
        fused = root / "fused.onnx"
        fuse_for_ort(directory / ONNX_FILE, fused, fusion_set)
        fused.replace(directory / ONNX_FILE)
    return directory


class Batches:
    """ORT calibration reader: the calibration texts in batches of CALIBRATION_BATCH rows, all
    padded to the longest text (the histogram calibrators stack every batch's tensors, so
    the shapes must agree; a last, shorter batch is left out)."""

    def __init__(self, directory: Path, texts: list[str]) -> None:
        artifact = open_artifact(directory)
        ids = TextEncoder(artifact.tokenizer, artifact.manifest).encode(texts).ids
        input_ids, mask = pad(ids, artifact.manifest.padding_id)
        self.batches = iter([(input_ids[i:i + CALIBRATION_BATCH], mask[i:i + CALIBRATION_BATCH])
                             for i in range(0, len(ids) - CALIBRATION_BATCH + 1,
                                            CALIBRATION_BATCH)])

    def __iter__(self):  # SmoothQuant iterates over a copy of the reader
        return self

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self, None)

    def __next__(self) -> dict[str, np.ndarray]:
        ids, mask = next(self.batches)
        return {"input_ids": ids, "attention_mask": mask}


def quantize(fp32: Path, target: Path, scheme: Scheme, calibration: list[str]) -> None:
    """``fp32`` (an export directory) quantized with ``scheme`` into the directory
    ``target`` (a copy of its tokenizer, config and manifest)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from clsx.export.quantize import sensitive_matmuls

    shutil.copytree(fp32, target, ignore=shutil.ignore_patterns("model.onnx*"))
    excluded = sensitive_matmuls(fp32 / ONNX_FILE) if scheme.sensitive_fp32 else []
    common = dict(per_channel=True, reduce_range=scheme.reduce_range,
                  weight_type=QuantType[scheme.weight], op_types_to_quantize=["MatMul"],
                  nodes_to_exclude=excluded)
    if not scheme.static:
        quantize_dynamic(fp32 / ONNX_FILE, target / ONNX_FILE, **common)
        return
    quantize_static(str(fp32 / ONNX_FILE), str(target / ONNX_FILE), Batches(fp32, calibration),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType[scheme.activation],
                    calibrate_method=CalibrationMethod[scheme.method],
                    extra_options={"QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                                   "SmoothQuant": scheme.smooth_quant},
                    **common)


def open_variant(directory: Path, session: dict[str, str]) -> Classifier:
    """The export opened as users open it, its session rebuilt with ``session`` entries."""
    import onnxruntime as ort

    classifier = open_export(directory, "onnx", CPU)
    if session:
        options = ort.SessionOptions()
        options.intra_op_num_threads = physical_cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for key, value in session.items():
            options.add_session_config_entry(key, value)
        classifier.runner.session = ort.InferenceSession(
            str(directory / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    return classifier


def measure(variants: dict[str, Callable[[], Classifier]], workloads: dict[str, list[str]],
            rounds: int, log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Logits and best rows/s of every variant on every workload; rounds alternate the order
    of the variants (one loaded at a time)."""
    results: dict[str, dict[str, Any]] = {name: {} for name in variants}
    for round_ in range(rounds):
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in order:
            with variants[name]() as classifier:
                for workload, texts in workloads.items():
                    classifier.predict_all(texts[:16])  # warm-up: session and allocator
                    started = time.perf_counter()
                    logits = classifier.predict_all(texts).logits
                    rate = len(texts) / (time.perf_counter() - started)
                    entry = results[name].setdefault(workload, {"logits": logits, "rps": 0.0})
                    entry["rps"] = max(entry["rps"], rate)
                    log(f"  round {round_ + 1} {name} {workload}: {rate:.1f} rows/s")
    return results


def table(results: dict[str, dict[str, Any]], reference: str, rule, baseline: str) -> list[dict]:
    """Rows: agreement with ``reference``'s labels and rows/s as a ratio of ``baseline``'s."""
    rows = []
    for name, workloads in results.items():
        for workload, entry in workloads.items():
            report = compare(results[reference][workload]["logits"], entry["logits"], rule)
            rows.append({"variant": name, "workload": workload, "rows": len(entry["logits"]),
                         "agreement": report.label_agreement,
                         "max_prob_diff": report.max_prob_diff,
                         "rows_per_s": round(entry["rps"], 1),
                         f"x_{baseline}": round(entry["rps"] /
                                                results[baseline][workload]["rps"], 2)})
    return rows


def options_run(name: str, model_dir: Path, dataset: str, schemes: list[str], args,
                root: Path, log: Callable[[str], None]) -> list[dict]:
    """Every scheme against fp32 ONNX and PyTorch fp32 on one trained model."""
    evaluation, calibration = texts_for(dataset, args.eval_rows, args.calibration_rows)
    fp32 = fp32_graph(model_dir, root / name, INT8)
    variants: dict[str, Callable[[], Classifier]] = {
        "torch fp32": lambda: Classifier.from_artifact(
            open_artifact(model_dir), "torch", RunnerOptions(device="cpu", dtype="fp32")),
        "onnx fp32": lambda: open_export(fp32, "onnx", CPU),
    }
    for scheme_name in schemes:
        scheme = SCHEMES[scheme_name]
        target = root / name / scheme_name.replace(" ", "_").replace(",", "")
        started = time.perf_counter()
        quantize(fp32, target, scheme, calibration)
        log(f"{name}: quantized {scheme_name} in {time.perf_counter() - started:.0f} s")
        variants[scheme_name] = lambda t=target, s=scheme: open_variant(t, s.session)
    results = measure(variants, {dataset: evaluation}, args.rounds, log)
    with open_export(fp32, "onnx", CPU) as classifier:
        rule = classifier.rule
    return [{"model": name, **row} for row in table(results, "onnx fp32", rule, "onnx fp32")]


def fusion_run(name: str, model_dir: Path, dataset: str, args, root: Path,
               log: Callable[[str], None]) -> list[dict]:
    """The shipped int8 scheme on the unfused, fully fused and int8-fused graphs, short and
    512-token texts; ratios against the unfused fp32 graph."""
    from clsx.export.quantize import quantize_int8

    evaluation = texts_for(dataset, args.fusion_rows, args.calibration_rows)[0]
    workloads = {"short": evaluation, "long (512 tokens)": long_texts(args.long_rows)}
    variants: dict[str, Callable[[], Classifier]] = {}
    for fusion_set in (None, FULL, INT8):
        fp32 = fp32_graph(model_dir, root / f"{name}-fusion", fusion_set)
        label = f"{fusion_set} fusion set" if fusion_set else UNFUSED
        variants[f"fp32, {label}"] = lambda d=fp32: open_export(d, "onnx", CPU)
        target = root / f"{name}-fusion" / f"int8-{fusion_set}"
        shutil.copytree(fp32, target, ignore=shutil.ignore_patterns("model.onnx*"))
        quantize_int8(fp32 / ONNX_FILE, target / ONNX_FILE, [])
        variants[f"int8, {label}"] = lambda d=target: open_export(d, "onnx", CPU)
    results = measure(variants, workloads, args.rounds, log)
    with variants[f"fp32, {UNFUSED}"]() as classifier:
        rule = classifier.rule
    return [{"model": name, **row}
            for row in table(results, f"fp32, {UNFUSED}", rule, f"fp32, {UNFUSED}")]


def markdown(rows: list[dict], title: str, baseline: str) -> str:
    """A Markdown table of ``rows``."""
    lines = [f"### {title}", "",
             f"| model | workload | variant | rows | agreement | max prob diff | rows/s | "
             f"x {baseline} |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agreement = "n/a" if r["agreement"] is None else f"{r['agreement']:.2%}"
        lines.append(f"| {r['model']} | {r['workload']} | {r['variant']} | {r['rows']} | "
                     f"{agreement} | {r['max_prob_diff']:.2e} | {r['rows_per_s']} | "
                     f"{next(v for k, v in r.items() if k.startswith('x_'))} |")
    return "\n".join(lines) + "\n"


def parse_model(spec: str) -> tuple[str, Path, str]:
    """NAME=DIR:DATASET."""
    name, rest = spec.split("=", 1)
    directory, dataset = rest.rsplit(":", 1)
    return name, Path(directory), dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=DIR:DATASET")
    parser.add_argument("--schemes", help="scheme names separated by ; (default: all)")
    parser.add_argument("--fusion-model", help="NAME=DIR:DATASET for the fusion comparison")
    parser.add_argument("--eval-rows", type=int, default=2000)
    parser.add_argument("--calibration-rows", type=int, default=256)
    parser.add_argument("--fusion-rows", type=int, default=1000)
    parser.add_argument("--long-rows", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="int8_options")
    parser.add_argument("--neural-compressor", help="a directory holding neural-compressor "
                        "2.x (SmoothQuant; 3.x has no ONNX Runtime support)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite NAME.md from NAME.json; measure nothing")
    args = parser.parse_args()
    runs = stored_runs(args.name)
    if not args.report_only:
        runs.append(measure_run(args))
    save(args.name, {"runs": runs}, report(runs))
    print(report(runs))


def measure_run(args: argparse.Namespace) -> dict[str, Any]:
    """One invocation's measurements: the schemes of each --model, the --fusion-model's
    fusion sets."""
    schemes = args.schemes.split(";") if args.schemes else list(SCHEMES)
    if args.neural_compressor:
        sys.path.append(args.neural_compressor)  # after the venv: its numpy wins
    data: dict[str, Any] = {"machine": machine_description(), "cpu_flags": cpu_flags(),
                            "command": sys.argv, "options": [], "fusion": []}
    print(f"CPU: {data['machine']}; int8 flags: {', '.join(data['cpu_flags'])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="clsx-int8-") as tmp:
        root = Path(tmp)
        for spec in args.model:
            name, directory, dataset = parse_model(spec)
            data["options"] += options_run(name, directory, dataset, schemes, args, root, print)
            shutil.rmtree(root / name)
        if args.fusion_model:
            name, directory, dataset = parse_model(args.fusion_model)
            data["fusion"] = fusion_run(name, directory, dataset, args, root, print)
    return data


def report(runs: list[dict[str, Any]]) -> str:
    """Markdown of every stored run (one invocation each), with its CPU and command."""
    text = ("## int8 options and fusion sets (issue 16)\n\n"
            "Made with `python benchmarks/int8_options.py`. Each variant runs through the "
            "Classifier users run; agreement: the share of texts whose labels (argmax; the "
            "whole label set at the model's thresholds for multi-label) equal the reference "
            "graph's, on texts that neither training nor calibration (256 other texts, for "
            "the static schemes) saw; rows/s: best of the rounds, which alternate the "
            "variants' order; `x`: rows/s over the reference's in the same run.\n\n")
    for run in runs:
        text += (f"CPU: {run['machine']}; int8-relevant flags: {', '.join(run['cpu_flags'])}. "
                 f"Command: `python {' '.join(run['command'])}`\n\n")
        if run["options"]:
            text += markdown(run["options"], "Schemes (agreement with the fp32 ONNX graph's "
                             "labels on texts no quantizer saw)", "onnx fp32") + "\n"
        if run["fusion"]:
            text += markdown(run["fusion"], "Fusion sets (shipped int8 scheme; agreement "
                             "with the unfused fp32 graph)", f"fp32, {UNFUSED}") + "\n"
    return text


def cpu_flags() -> list[str]:
    """The CPU flags int8 kernels choose by (VNNI: 32-bit accumulation of u8s8 products)."""
    return [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                              "amx_int8") if flag in hardware_flags()]


def stored_runs(name: str) -> list[dict[str, Any]]:
    """The runs earlier invocations saved under ``name`` (each measures other models)."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text())["runs"] if path.exists() else []


if __name__ == "__main__":
    main()
