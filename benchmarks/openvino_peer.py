"""OpenVINO: clsx's paths against a plain OpenVINO loop, side by side in one run.

    python benchmarks/openvino_peer.py --model minilm=DIR [--model smollm2=DIR] [--short 3000] \
        [--long 300] [--rounds 2] [--peer-graph LABEL=NAME:PATH] [--onnx-graphs] [--quick] \
        [--auto-on short,long] [--report-only]

For each trained clsx model directory and workload (short: SST-2 sentences + disaster
tweets; long: BBC news cut at 512 tokens) it exports the model once (``openvino``, and
``openvino-int8`` calibrated on 500 other short texts; with ``--onnx-graphs`` also ``onnx``
fused and ``--no-fusion``) and measures:

- the peer: OpenVINO used directly, as a user would write it: ``Core().compile_model(graph,
  "CPU")`` at OpenVINO's default precision (bf16 where the CPU has AVX-512 BF16 or AMX) and at
  f32, on length-sorted batches under an 8,192-token budget, tokenisation timed, texts in
  memory. Over each graph OpenVINO could read: clsx's IR (``openvino.convert_model`` of the
  PyTorch model), clsx's int8 IR (nncf; shown, but not the loop ``x loop`` compares with:
  it changes labels), with ``--onnx-graphs`` clsx's ONNX export fused (ONNX Runtime contrib
  ops) and unfused, and any
  ``--peer-graph`` (for example optimum-intel's IR, exported in a venv of its own: it pins
  transformers < 5.6, which cannot live beside clsx's);
- ``clsx batch-predict`` Parquet to Parquet: torch fp32 (the reference every agreement is
  measured against), torch bf16 (re-checked, as by default), openvino fp32 and bf16
  (re-checked) on the ``openvino`` export, the ``openvino-int8`` export (re-checked by the
  fp32 IR it carries), and ``--backend auto --auto-formats``.

clsx rows/s is the job's own figure from its summary line (reading, tokenising, classifying,
re-checking and writing; not the interpreter's start or the model load), best of the rounds,
with the rounds alternating the order; a bf16 run first runs once untimed, which measures
its re-check cut on IN's first 512 texts and remembers it (once per model and machine). The
loop's is rows over its timed loop, best of the rounds. Labels equal to fp32: the share of
rows whose label equals clsx torch fp32's. Each invocation replaces the stored run of the
models it measured in benchmarks/results/openvino.{json,md} and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clsx.inference.hardware import cpu_flags, machine_description, physical_cores

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import clsx as clsx_command  # noqa: E402
from recheck import clsx as clsx_timed  # noqa: E402
from recheck import run_once  # noqa: E402
from report import RESULTS, save  # noqa: E402
from throughput import LONG_TOKENS, WARM_UP_ROWS, calibration_data, workload_texts  # noqa: E402

BATCH_TOKENS = 8192  # the loop's padded-token budget per batch, as clsx's default
SHORT_TOKENS = 128
# clsx runs: (name, backend, directory key, extra options)
CLSX_RUNS = (
    ("clsx torch fp32", "torch", "torch", ("--dtype", "fp32")),
    ("clsx torch bf16 + re-check", "torch", "torch", ("--dtype", "bf16")),
    ("clsx openvino fp32", "openvino", "openvino", ("--dtype", "fp32")),
    ("clsx openvino bf16 + re-check", "openvino", "openvino", ("--dtype", "bf16")),
    ("clsx openvino-int8 + re-check", "openvino", "openvino-int8", ()),
    ("clsx auto", "auto", "torch", ("--auto-formats",)),
)
REFERENCE = "clsx torch fp32"
# --quick (a decoder's hours): the reference, clsx's fastest exact paths and auto, and the
# loop at its default precision only.
QUICK = (REFERENCE, "clsx openvino bf16 + re-check", "clsx openvino-int8 + re-check",
         "clsx auto")
INT8_IR = "clsx int8 IR"  # the loop over it changes labels: not the loop clsx is compared with


def openvino_loop(graph: Path, tokenizer_dir: Path, texts: list[str], max_length: int,
                  precision: str | None, pad_id: int, rounds: int) -> dict[str, Any]:
    """OpenVINO as a user runs it: compile, tokenise, sort by length, batch under the
    token budget, infer; best rows/s of ``rounds`` and the labels (argmax)."""
    import openvino as ov
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = {} if precision is None else {"INFERENCE_PRECISION_HINT": precision}
    compiled = ov.Core().compile_model(str(graph), "CPU", config)
    names = {port.get_any_name() for port in compiled.inputs}

    def classify(batch_texts: list[str]) -> np.ndarray:
        ids = tokenizer(batch_texts, truncation=True, max_length=max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        logits: list[np.ndarray | None] = [None] * len(ids)
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(ids[order[end]]) <= BATCH_TOKENS:
                end += 1
            chosen = order[start:end]
            width = len(ids[chosen[-1]])
            input_ids = np.full((len(chosen), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            for row, i in enumerate(chosen):
                input_ids[row, :len(ids[i])] = ids[i]
                mask[row, :len(ids[i])] = 1
            feed = {"input_ids": input_ids, "attention_mask": mask,
                    "token_type_ids": np.zeros_like(input_ids)}
            out = compiled({name: feed[name] for name in names})[0]
            for row, i in enumerate(chosen):
                logits[i] = out[row]
            start = end
        return np.stack(logits)

    classify(texts[:64])
    best, labels = 0.0, None
    for _ in range(rounds):
        started = time.perf_counter()
        labels = classify(texts).argmax(axis=1)
        best = max(best, len(texts) / (time.perf_counter() - started))
    return {"rows_per_s": round(best, 1), "labels": labels.tolist()}


def graphs(name: str, model_dir: Path, root: Path, peers: dict[str, Path], onnx_graphs: bool,
           calibration: Path) -> dict[str, Path]:
    """Every graph the loop runs, by label: clsx's IR and int8 IR (calibrated on
    ``calibration``; left out where its gate refuses it), its ONNX exports (``onnx_graphs``)
    and any ``--peer-graph``."""
    made: dict[str, Path] = {}
    onnx = ((("clsx ONNX fused", "onnx", ()), ("clsx ONNX unfused", "onnx", ("--no-fusion",)))
            if onnx_graphs else ())
    int8 = (INT8_IR, "openvino-int8", ("--calibration-data", calibration))
    for label, fmt, extra in (("clsx IR", "openvino", ()), int8, *onnx):
        target = root / f"{name}-{label.replace(' ', '-')}"
        try:
            print(clsx_command("export", model_dir, "--format", fmt, "--output", target,
                               "--overwrite", *extra), flush=True)
        except SystemExit as refused:
            if label != INT8_IR:
                raise
            print(f"  {label}: {refused}", flush=True)  # int8 missed its agreement gate
            continue
        made[label] = target / ("model.onnx" if fmt == "onnx" else "model.xml")
    return {**made, **peers}


def measure(name: str, model_dir: Path, args: argparse.Namespace, root: Path,
            peers: dict[str, Path]) -> list[dict[str, Any]]:
    """Every system on both workloads for one model."""
    manifest = json.loads((model_dir / "clsx.json").read_text())
    labels, pad_id = manifest["labels"], manifest["pad_token_id"]
    calibration = calibration_data(root / f"{name}-calibration.parquet",
                                   args.short + WARM_UP_ROWS)
    loop_graphs = graphs(name, model_dir, root, peers, args.onnx_graphs, calibration)
    ir_dir = loop_graphs["clsx IR"].parent
    env = {**os.environ, "CLSX_CACHE": str(root / f"{name}-cache")}
    rows: list[dict[str, Any]] = []
    for workload, count in (("short", args.short), ("long", args.long)):
        texts, _ = workload_texts(workload, count)
        max_length = LONG_TOKENS if workload == "long" else SHORT_TOKENS
        data = root / f"{name}-{workload}.parquet"
        pq.write_table(pa.table({"text": texts}), data)
        out = root / "out.parquet"
        systems = [run for run in CLSX_RUNS if (not args.quick or run[0] in QUICK)
                   and (run[0] != "clsx auto" or workload in args.auto_on)
                   and (run[2] != "openvino-int8" or INT8_IR in loop_graphs)]
        chose = None
        if workload in args.auto_on:
            # The format search runs once, untimed; the rounds run its remembered choice.
            log, _ = clsx_timed(["batch-predict", str(data), str(out), "--model",
                                 str(model_dir), "--max-length", str(max_length),
                                 "--overwrite", "--quiet", "--auto-formats"], env)
            chose = next(line for line in log.splitlines() if "--backend auto chose" in line)
        results: dict[str, dict[str, Any]] = {}
        directories = {"torch": model_dir, "openvino": ir_dir}
        if INT8_IR in loop_graphs:
            directories["openvino-int8"] = loop_graphs[INT8_IR].parent
        for _, backend, key, extra in systems:
            if "bf16" in extra:  # its re-check cut, measured once and remembered: untimed
                run_once(directories[key], backend, extra, data, out, max_length, env)
        for round_index in range(args.rounds):
            order = systems if round_index % 2 == 0 else systems[::-1]
            for system, backend, key, extra in order:
                run = run_once(directories[key], backend, extra, data, out, max_length, env)
                previous = results.get(system)
                if previous is None or run["job_rows_per_s"] > previous["job_rows_per_s"]:
                    run["labels"] = pq.read_table(out, columns=["label"]).column(
                        "label").to_pylist()
                    results[system] = run
        reference = results[REFERENCE]["labels"]
        for system, run in results.items():
            rows.append(row(name, workload, system, "yes", run["job_rows_per_s"],
                            run["labels"], reference, rechecked=run["rechecked"],
                            chose=chose if system == "clsx auto" else None))
        for graph_label, graph in loop_graphs.items():
            for precision in (None,) if args.quick else (None, "f32"):
                result = openvino_loop(graph, ir_dir, texts, max_length, precision, pad_id,
                                       args.rounds)
                shown = [labels[i] for i in result["labels"]]
                system = f"OpenVINO loop, {graph_label}, {precision or 'default precision'}"
                rows.append(row(name, workload, system, "", result["rows_per_s"], shown,
                                reference))
                print(f"  {system}: {result['rows_per_s']} rows/s", flush=True)
    return rows


def row(model: str, workload: str, system: str, p2p: str, rows_per_s: float, labels: list,
        reference: list, rechecked: int | None = None, chose: str | None = None
        ) -> dict[str, Any]:
    """One line of the table: rows/s and labels equal to torch fp32's."""
    agreement = float(np.mean(np.array(labels) == np.array(reference)))
    return {"model": model, "workload": workload, "system": system, "p2p": p2p,
            "rows": len(labels), "rows_per_s": rows_per_s, "agreement": round(agreement, 5),
            "rechecked": rechecked, "chose": chose}


def markdown(run: dict[str, Any]) -> str:
    """The table, with each row's ratio to the fastest OpenVINO loop of its panel over an
    fp32 graph."""
    models = ", ".join(dict.fromkeys(r["model"] for r in run["rows"]))
    lines = [f"## {models}", "", f"Machine: {run['machine']}. Command: `{run['command']}`.", "",
             "`P2P` = `clsx batch-predict` Parquet to Parquet (the job's own rows/s from its "
             "summary line); otherwise texts in memory. `x loop` = rows/s over the fastest "
             "OpenVINO loop over an fp32 graph (not clsx's int8 IR) of the same model and "
             "workload. `fp32 labels` = labels equal to "
             "clsx torch fp32's.", ""]
    chose = {(r["model"], r["workload"]): r["chose"] for r in run["rows"] if r["chose"]}
    lines += [f"- {model} {workload}: {line}" for (model, workload), line in chose.items()]
    lines += ["", "| model | workload | system | P2P | rows | rows/s | x loop | fp32 labels "
              "| re-checked |", "|---|---|---|---|---|---|---|---|---|"]
    for r in run["rows"]:
        best_loop = max(o["rows_per_s"] for o in run["rows"] if o["model"] == r["model"]
                        and o["workload"] == r["workload"] and not o["p2p"]
                        and INT8_IR not in o["system"])
        rechecked = "" if r["rechecked"] is None else f"{r['rechecked'] / r['rows']:.1%}"
        lines.append(f"| {r['model']} | {r['workload']} | {r['system']} | {r['p2p']} | "
                     f"{r['rows']} | {r['rows_per_s']} | {r['rows_per_s'] / best_loop:.2f} | "
                     f"{r['agreement']:.2%} | {rechecked} |")
    return "\n".join(lines) + "\n"


def report(runs: list[dict[str, Any]]) -> str:
    """Every stored run's table under one title."""
    return "\n".join(["# OpenVINO: clsx against a plain OpenVINO loop", "",
                      *(markdown(run) for run in runs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--short", type=int, default=3000)
    parser.add_argument("--long", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peer-graph", action="append", default=[], metavar="NAME=MODEL:PATH",
                        help="another graph for the loop of MODEL (e.g. optimum-intel's IR)")
    parser.add_argument("--onnx-graphs", action="store_true",
                        help="also run the loop over clsx's ONNX exports (fused, unfused)")
    parser.add_argument("--quick", action="store_true",
                        help="only torch fp32, openvino bf16 and int8 (re-checked), auto, and "
                             "the loop at its default precision")
    parser.add_argument("--auto-on", default="short,long", type=lambda v: v.split(","),
                        help="workloads to run --backend auto --auto-formats on (its search "
                             "probes 256 texts per candidate: on a decoder's long texts, "
                             "half an hour here)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.report_only:
        runs = json.loads((RESULTS / "openvino.json").read_text())
        save("openvino", runs, report(runs))
        return
    if not args.model:
        parser.error("give at least one --model NAME=DIR (a trained clsx model directory)")
    peers: dict[str, dict[str, Path]] = {}
    for spec in args.peer_graph:
        label, target = spec.split("=", 1)
        model, path = target.split(":", 1)
        peers.setdefault(model, {})[label] = Path(path)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="clsx-openvino-") as temporary:
        for spec in args.model:
            name, directory = spec.split("=", 1)
            rows += measure(name, Path(directory), args, Path(temporary), peers.get(name, {}))
    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2"))))
    run = {"machine": f"{machine_description()}; {physical_cores()} physical cores; flags: "
                      f"{flags}",
           "command": "python benchmarks/openvino_peer.py " + " ".join(sys.argv[1:]), "rows": rows}
    stored = RESULTS / "openvino.json"
    runs = [kept for kept in (json.loads(stored.read_text()) if stored.is_file() else [])
            if not {r["model"] for r in kept["rows"]} & {r["model"] for r in rows}]
    runs.append(run)
    print(markdown(run))
    save("openvino", runs, report(runs))


if __name__ == "__main__":
    main()
