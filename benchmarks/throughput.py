"""Throughput of clsx against what a user would run instead, side by side on the same rows.

    python benchmarks/throughput.py [--model minilm=DIR] [--model smollm2=DIR] [--scale 1.0]

For each model and workload (short: SST-2 sentences + disaster tweets; long: BBC news cut at
512 tokens) one run measures:
- the user's baseline, HF ``pipeline("text-classification", batch_size=32)`` in fp32, and the
  same in bf16;
- vLLM ``LLM.classify`` used directly on the texts (decoder models, where vllm is installed);
- ``clsx batch-predict`` Parquet to Parquet with each backend (torch fp32, torch bf16 where the
  CPU computes bf16 natively, onnx, onnx-int8 (both as exported, with ONNX Runtime's fusions,
  and with ``--no-fusion``), vllm fp32 for decoders, openvino fp32 and bf16 (where OpenVINO is
  installed and, for bf16, native), and ``--backend auto --auto-formats`` running what it
  chose), and the same backends model-only (texts in memory, ``Classifier.predict_all``) for
  the share that Parquet I/O costs;
- where OpenVINO is installed, a plain OpenVINO loop over clsx's IR as a user would write it
  (default precision, length-sorted batches: ``openvino_peer.openvino_loop``), texts in
  memory, so that the table shows whether clsx's path beats it.
It reports rows/s, tokens/s, the share of the matmul peak measured in the same run
(2 x non-embedding parameters x tokens/s over the fp32, bf16 or int8 peak), peak RSS, label
agreement with the fp32 baseline and the ratio to it, and writes
benchmarks/results/throughput.{json,md,png}.

Without --model, the bundled minilm-l6 and smollm2-135m get untrained 2-label heads (speed
does not depend on the head; label agreement of int8 is only meaningful on a trained head, so
pass trained models for that). Row counts (``ROWS``) are scaled by --scale to fit 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clsx.inference.hardware import machine_description, native_low_precision, physical_cores

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402
from backends import SUMMARY, clsx, untrained_classifier  # noqa: E402
from report import RESULTS, save  # noqa: E402

ROWS = {("minilm", "short"): 10_000, ("minilm", "long"): 1_000,
        ("smollm2", "short"): 2_000, ("smollm2", "long"): 100}
LONG_TOKENS = 512
BF16_ROWS_WITHOUT_NATIVE = 64  # emulated bf16 is slow: measure it on a few rows only
HF_BATCH = 32
WARM_UP_ROWS = 64
CALIBRATION_ROWS = 500
# ONNX exports as clsx writes them (with ONNX Runtime's fusions) and without the fusions.
UNFUSED = "-unfused"
ONNX_VARIANTS = ("onnx", f"onnx{UNFUSED}", "onnx-int8", f"onnx-int8{UNFUSED}")
REFUSED_AGREEMENT = re.compile(r"int8 labels agree with fp32 on ([\d.]+)%")
AUTO_CHOICE = re.compile(r"--backend auto chose (.+?)(?:, remembered)?: .*")
# The number format of what --backend auto chose, for the share of its peak.
AUTO_DTYPES = {"torch fp32": "fp32", "torch bf16": "bf16", "onnx": "fp32", "onnx-int8": "int8",
               "openvino fp32": "fp32", "openvino bf16": "bf16", "vllm fp32": "fp32",
               "vllm bf16": "bf16"}


def real_texts(workload: str) -> list[str]:
    """Short texts (SST-2 + disaster tweets, interleaved) or long ones (BBC news)."""
    if workload == "long":
        return realdata.bbc_news().column("text").to_pylist()
    tables = [realdata.sst2("train"), realdata.disaster_tweets()]
    return [t for pair in zip(*(t.column("text").to_pylist() for t in tables), strict=False)
            for t in pair]


def workload_texts(workload: str, rows: int) -> tuple[list[str], list[str]]:
    """``rows`` real texts to measure and 64 others to warm up on. Warming up on measured
    texts would let vLLM's prefix cache serve them again (it did: a long-text run read 3x
    the fp32 peak)."""
    texts = real_texts(workload)
    chosen = [texts[i % len(texts)] for i in range(rows + WARM_UP_ROWS)]
    return chosen[:rows], chosen[rows:]


def calibration_data(path: Path, skip: int) -> Path:
    """``CALIBRATION_ROWS`` short texts after the first ``skip`` (the measured and warm-up
    ones, as far as the pool allows) for the int8 export's agreement gate."""
    texts = real_texts("short")
    pq.write_table(pa.table({"text": [texts[(skip + i) % len(texts)]
                                      for i in range(CALIBRATION_ROWS)]}), path)
    return path


def matmul_peak(dtype: str, size: int = 1024, seconds: float = 3.0, device: str = "cpu"
                ) -> float:
    """GFLOP/s of a large square matmul in torch on all physical cores or a GPU (emulated
    bf16 takes seconds per product on CPU, hence a size that still saturates the cores but
    no larger; a GPU needs a larger one)."""
    import torch

    torch.set_num_threads(physical_cores())
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(size, size, dtype=kind, device=device)
    b = torch.randn(size, size, dtype=kind, device=device)
    wait = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return _gflops(lambda: (a @ b, wait()), 2 * size**3, seconds)


def int8_matmul_peak(size: int = 1024, seconds: float = 3.0) -> float:
    """GFLOP/s (integer ops counted as FLOPs) of one square MatMul quantized as ``clsx export
    --format onnx-int8`` quantizes a model's, run by ONNX Runtime on all physical cores."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from clsx.export.quantize import quantize_int8

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "w")
    square = [size, size]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "peak",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, square)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, square)], [weight])
    with tempfile.TemporaryDirectory(prefix="clsx-int8-peak-") as temporary:
        fp32, int8 = Path(temporary) / "fp32.onnx", Path(temporary) / "int8.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
        quantize_int8(fp32, int8, [])
        options = ort.SessionOptions()
        options.intra_op_num_threads = physical_cores()
        session = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    x = {"x": rng.standard_normal(square, dtype=np.float32)}
    return _gflops(lambda: session.run(None, x), 2 * size**3, seconds)


def _gflops(step: Callable[[], object], flops: float, seconds: float) -> float:
    """GFLOP/s of ``step`` (``flops`` each), run once to warm up and then for ``seconds``."""
    step()
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 1:
        step()
        runs += 1
    return flops * runs / (time.perf_counter() - started) / 1e9


def non_embedding_params(model_dir: Path) -> int:
    """Parameters that take part in per-token matmuls (embedding tables excluded)."""
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(path, "pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a dict)
                if "embed" not in name:
                    total += int(np.prod(weights.get_slice(name).get_shape()))
    return total


@contextlib.contextmanager
def peak_rss(pid: int | None = None) -> Iterator[list[int]]:
    """Sample the RSS of a process tree (default: this process) until the block ends."""
    import psutil

    root = psutil.Process(pid)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
            stop.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def hf_pipeline(model_dir: Path, texts: list[str], warm_up: list[str], dtype: str,
                max_length: int, device: str = "cpu") -> dict:
    """The baseline a user writes: transformers' text-classification pipeline."""
    import torch
    from transformers import pipeline

    torch.set_num_threads(physical_cores())
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    classifier = pipeline("text-classification", model=str(model_dir), device=device,
                          dtype=kind)
    label2id = classifier.model.config.label2id
    run = {"truncation": True, "max_length": max_length, "batch_size": HF_BATCH}
    classifier(warm_up[:HF_BATCH], **run)
    with peak_rss() as peak:
        started = time.perf_counter()
        outputs = classifier(texts, **run)
        seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in classifier.tokenizer(
        texts, truncation=True, max_length=max_length)["input_ids"])
    return measurement(len(texts), tokens, seconds, peak[0],
                       [label2id[o["label"]] for o in outputs])


def vllm_direct(model_dir: Path, texts: list[str], warm_up: list[str], max_length: int
                ) -> dict:
    """vLLM used directly: ``LLM.classify`` on the raw texts, fp32 (bf16 is emulated here)."""
    import psutil
    from vllm import LLM

    llm = LLM(model=str(model_dir), runner="pooling", dtype="float32", max_model_len=max_length,
              enforce_eager=True, seed=0,
              kv_cache_memory_bytes=int(0.05 * psutil.virtual_memory().total))
    truncate = {"truncation": True, "max_length": max_length}
    llm.classify(warm_up, use_tqdm=False, tokenization_kwargs=truncate)
    with peak_rss() as peak:
        started = time.perf_counter()
        outputs = llm.classify(texts, use_tqdm=False, tokenization_kwargs=truncate)
        seconds = time.perf_counter() - started
    tokens = sum(len(out.prompt_token_ids) for out in outputs)
    labels = [int(np.argmax(out.outputs.probs)) for out in outputs]
    llm.llm_engine.engine_core.shutdown()
    return measurement(len(texts), tokens, seconds, peak[0], labels)


def batch_predict_command(model_dir: Path, backend: str, data: Path, out: Path,
                          max_length: int, dtype: str | None, device: str,
                          extra: tuple[str, ...]) -> list[str]:
    """The ``clsx batch-predict`` command line of a measured run, echoed as it starts."""
    command = [sys.executable, "-m", "clsx", "batch-predict", str(data), str(out), "--model",
               str(model_dir), "--backend", backend, "--max-length", str(max_length),
               "--device", device, "--overwrite", "--quiet",
               *(["--dtype", dtype] if dtype else []), *extra]
    print("$ " + " ".join(command[2:]), flush=True)
    return command


def clsx_parquet(model_dir: Path, backend: str, data: Path, out: Path, max_length: int,
                 dtype: str | None, device: str = "cpu", extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> dict:
    """``clsx batch-predict`` Parquet to Parquet in a subprocess (its RSS tree sampled);
    ``extra`` options are added to its command line, ``env`` replaces its environment."""
    command = batch_predict_command(model_dir, backend, data, out, max_length, dtype, device,
                                    extra)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    with peak_rss(process.pid) as peak:
        log, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"failed:\n{log}")
    rows, seconds, _, tokens_s = SUMMARY.search(log).groups()
    table = pq.read_table(out, columns=["label"])
    return measurement(int(rows), int(tokens_s) * float(seconds), float(seconds), peak[0],
                       table.column("label").to_pylist())


def clsx_auto(model_dir: Path, data: Path, root: Path, max_length: int) -> dict:
    """``clsx batch-predict --backend auto --auto-formats``: a first run makes the choice
    (exports and timings; its whole wall time is ``search_s``), a second one runs the
    remembered choice and is measured as the other Parquet-to-Parquet rows are."""
    env = {**os.environ, "CLSX_CACHE": str(root / "auto-cache")}  # exports made once
    command = batch_predict_command(model_dir, "auto", data, root / "out.parquet", max_length,
                                    None, "cpu", ("--auto-formats",))
    started = time.perf_counter()
    first = subprocess.run(command, capture_output=True, text=True, env=env)
    search_s = time.perf_counter() - started
    chose = AUTO_CHOICE.search(first.stderr)
    if first.returncode != 0 or chose is None:
        raise SystemExit(f"failed:\n{first.stderr}")
    print(chose.group(0), flush=True)
    result = clsx_parquet(model_dir, "auto", data, root / "out.parquet", max_length, None,
                          extra=("--auto-formats",), env=env)
    result.update(chose=chose.group(1), search_s=round(search_s, 1))
    return result


def clsx_model_only(model_dir: Path, backend: str, texts: list[str], warm_up: list[str],
                    max_length: int, dtype: str | None, device: str = "cpu") -> dict:
    """The same backend on texts in memory: the model-only throughput of clsx."""
    from clsx.inference.classifier import Classifier
    from clsx.inference.runners import RunnerOptions

    with Classifier.open(model_dir, backend, RunnerOptions(device=device, dtype=dtype),
                         max_length=max_length) as classifier:
        classifier.predict_all(warm_up)
        started = time.perf_counter()
        prediction = classifier.predict_all(texts)
        seconds = time.perf_counter() - started
    labels = classifier.rule.decide(prediction.logits).tolist()
    return measurement(len(texts), prediction.counts.tokens, seconds, 0, labels)


def measurement(rows: int, tokens: float, seconds: float, rss: int, labels: list) -> dict:
    return {"rows": rows, "tokens": int(tokens), "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds, 1), "tokens_per_s": round(tokens / seconds),
            "peak_rss_mb": round(rss / 2**20) if rss else None, "labels": labels}


def exports(model_dir: Path, root: Path, decoder: bool, vllm: bool, calibration: Path,
            openvino: bool) -> tuple[dict[str, Path], set[str]]:
    """The model directory and its exports, by clsx backend variant, and the int8 variants
    whose export gate refused them.

    int8 is exported as a user would, gated at the default agreement on ``calibration``
    (which may keep sensitive MatMuls in fp32). Where the gate refuses it, it is exported
    again with the gate lowered to the agreement it reached, so that the table can still
    show what that int8 model costs and how often it changes labels.
    """
    extra = {"onnx": [], "onnx-int8": ["--calibration-data", calibration],
             "vllm": ["--dtype", "fp32"], "openvino": []}
    directories = {"torch": model_dir}
    refused: set[str] = set()
    for variant in (*ONNX_VARIANTS, *(["vllm"] if decoder and vllm else []),
                    *(["openvino"] if openvino else [])):
        fmt = variant.removesuffix(UNFUSED)
        target = root / f"{model_dir.name}-{variant}"
        export = ("export", model_dir, "--format", fmt, "--output", target, "--overwrite",
                  *extra[fmt], *(["--no-fusion"] if variant.endswith(UNFUSED) else []))
        try:
            print(clsx(*export), flush=True)
        except SystemExit as refusal:
            reached = REFUSED_AGREEMENT.search(str(refusal))
            if fmt != "onnx-int8" or not reached:
                raise
            print(refusal, flush=True)
            refused.add(variant)
            print(clsx(*export, "--min-agreement",
                       f"{float(reached.group(1)) / 100 - 1e-6:.6f}"), flush=True)
        directories[variant] = target
    return directories, refused


def measured_rows(name: str, workload: str, scale: float) -> int:
    """How many texts a workload measures: ``ROWS`` scaled, at least 32."""
    return max(32, int(ROWS[(name, workload)] * scale))


def measure_model(name: str, model_dir: Path, root: Path, scale: float, peaks: dict,
                  vllm: bool) -> list[dict]:
    """Every system on both workloads for one model; rows of the result table."""
    config = json.loads((model_dir / "config.json").read_text())
    decoder = config["model_type"] != "bert"
    manifest = json.loads((model_dir / "clsx.json").read_text())
    labels = manifest["labels"]
    params = non_embedding_params(model_dir)
    calibration = calibration_data(root / f"{name}-calibration.parquet",
                                   measured_rows(name, "short", scale) + WARM_UP_ROWS)
    openvino = importlib.util.find_spec("openvino") is not None
    directories, refused = exports(model_dir, root, decoder, vllm, calibration, openvino)
    native_bf16 = "bf16" in native_low_precision("cpu")
    rows: list[dict] = []
    for workload in ("short", "long"):
        count = measured_rows(name, workload, scale)
        texts, warm_up = workload_texts(workload, count)
        max_length = LONG_TOKENS if workload == "long" else 128
        data = root / f"{name}-{workload}.parquet"
        pq.write_table(pa.table({"text": texts}), data)

        def record(system: str, dtype: str, result: dict, p2p: bool = False,
                   workload: str = workload) -> None:
            result.update(model=name, workload=workload, system=system, dtype=dtype,
                          parquet_to_parquet=p2p, params=params)
            if system.startswith("clsx"):
                result["labels"] = [labels.index(x) if isinstance(x, str) else x
                                    for x in result["labels"]]
            rows.append(result)
            print(f"  {name} {workload} {system} {dtype}: {result['rows_per_s']} rows/s, "
                  f"{result['tokens_per_s']} tokens/s", flush=True)

        record("HF pipeline", "fp32", hf_pipeline(model_dir, texts, warm_up, "fp32", max_length))
        bf16_texts = texts if native_bf16 else texts[:BF16_ROWS_WITHOUT_NATIVE]
        record("HF pipeline", "bf16", hf_pipeline(model_dir, bf16_texts, warm_up, "bf16",
                                                  max_length))
        if decoder and vllm:
            record("vLLM LLM.classify", "fp32", vllm_direct(directories["torch"], texts,
                                                            warm_up, max_length))
        if openvino:
            from openvino_peer import openvino_loop  # it imports this module

            loop = openvino_loop(directories["openvino"] / "model.xml", model_dir, texts,
                                 max_length, None, manifest["pad_token_id"], rounds=1)
            record("OpenVINO loop", "bf16" if native_bf16 else "fp32",
                   measurement(count, 0, count / loop["rows_per_s"], 0, loop["labels"]))
        variants = [("torch", "torch", "fp32"),
                    *((variant, "onnx", None) for variant in ONNX_VARIANTS)]
        if native_bf16:
            variants.insert(1, ("torch", "torch", "bf16"))
        if "vllm" in directories:
            variants.append(("vllm", "vllm", "fp32"))
        if "openvino" in directories:
            variants += [("openvino", "openvino", dtype)
                         for dtype in ("fp32", *(["bf16"] if native_bf16 else []))]
        for variant, backend, dtype in variants:
            int8 = variant.startswith("onnx-int8")
            shown = dtype or ("int8" if int8 else "fp32")
            system = f"clsx {variant}" + (" (gate refused)" if variant in refused else "")
            record(system, shown, clsx_parquet(
                directories[variant], backend, data, root / "out.parquet", max_length, dtype),
                p2p=True)
            record(system, shown, clsx_model_only(
                directories[variant], backend, texts, warm_up, max_length, dtype))
        auto = clsx_auto(model_dir, data, root, max_length)
        record(f"clsx auto: {auto['chose']}", AUTO_DTYPES[auto["chose"]], auto, p2p=True)
    return finish(rows, peaks)


def finish(rows: list[dict], peaks: dict) -> list[dict]:
    """Ratios to the HF fp32 baseline, label agreement with it, share of the matmul peak."""
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"]
                    and r["workload"] == row["workload"] and r["system"] == "HF pipeline"
                    and r["dtype"] == "fp32")
        row["x_hf_fp32"] = round(row["rows_per_s"] / base["rows_per_s"], 2)
        n = len(row["labels"])
        row["agreement"] = round(float(np.mean(np.array(row["labels"])
                                               == np.array(base["labels"][:n]))), 4)
        row["peak_share"] = peak_share(row, peaks)
    for row in rows:  # model-only partner of each Parquet-to-Parquet row
        if row["parquet_to_parquet"]:
            alone = next((r for r in rows if not r["parquet_to_parquet"]
                          and r["model"] == row["model"] and r["workload"] == row["workload"]
                          and r["system"] == row["system"] and r["dtype"] == row["dtype"]),
                         None)  # clsx auto has none
            if alone is not None:
                row["share_of_model_only"] = round(row["rows_per_s"] / alone["rows_per_s"], 3)
    for row in rows:
        del row["labels"]
    return rows


def peak_share(row: dict, peaks: dict) -> float | None:
    """2 x non-embedding params x tokens/s over the matmul peak of the row's dtype; None where
    that dtype has no native peak here (emulated bf16) or none was measured."""
    peak = peaks.get(row["dtype"] if row["dtype"] in ("bf16", "int8") else "fp32")
    return None if peak is None else round(2 * row["params"] * row["tokens_per_s"] / peak / 1e9, 3)


def markdown(rows: list[dict], runs: dict[str, dict]) -> str:
    """The result table, after one line per model on the run that measured it."""
    lines = ["# Throughput: clsx against the HF pipeline and vLLM", "",
             f"Machine: {machine_description()}, no GPU. Each model's rows come from one run, "
             "with the matmul peaks measured in that run (int8: ONNX Runtime running one "
             "MatMul quantized as `clsx export --format onnx-int8` does; bf16 is not measured "
             "where the CPU only emulates it):", "",
             *(f"- {name}: `{run['command']}`; peaks "
               + ", ".join(f"{dtype} {peak:.0f} GFLOP/s" for dtype, peak
                           in run["peaks_gflops"].items() if peak is not None)
               for name, run in runs.items()), "",
             "`P2P` = Parquet to Parquet (`clsx batch-predict`); without it, texts in memory "
             "(model only). `agreement` = labels equal to the HF fp32 pipeline's; `% peak` = "
             "2 x non-embedding params x tokens/s over the peak of the row's dtype (int8 rows: "
             "the int8 peak, although the export may keep some MatMuls in fp32). `gate "
             "refused`: `clsx export` refused int8 at its default 98% agreement on 500 other "
             "short texts; it was exported with the gate at the agreement reached, to show "
             "what it would cost. `clsx auto: X`: `--backend auto --auto-formats`, run once to "
             "choose X (exports and timings on the first texts of the same input; the seconds "
             "below), then measured running the remembered choice.", "",
             *(f"- {r['model']} {r['workload']}: `--backend auto` chose {r['chose']} in "
               f"{r['search_s']} s (first run, exports included)"
               for r in rows if "chose" in r), "",
             "| model | workload | system | dtype | P2P | rows | rows/s | tokens/s | x HF fp32 "
             "| agreement | % peak | P2P / model-only | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share, of_peak = r.get("share_of_model_only"), r["peak_share"]
        lines.append(
            f"| {r['model']} | {r['workload']} | {r['system']} | {r['dtype']} | "
            f"{'yes' if r['parquet_to_parquet'] else ''} | {r['rows']} | {r['rows_per_s']} | "
            f"{r['tokens_per_s']} | {r['x_hf_fp32']} | {r['agreement']:.2%} | "
            f"{'n/a' if of_peak is None else f'{of_peak:.1%}'} | "
            f"{'' if share is None else f'{share:.0%}'} | "
            f"{r['peak_rss_mb'] or ''} |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    """Bar chart of rows/s per system, one panel per model and workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["workload"]) for r in rows})
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for axis, (model, workload) in zip(axes[0], panels, strict=True):
        chosen = [r for r in rows if (r["model"], r["workload"]) == (model, workload)]
        names = [f"{r['system']} {r['dtype']}{' P2P' if r['parquet_to_parquet'] else ''}"
                 for r in chosen]
        axis.barh(names, [r["rows_per_s"] for r in chosen],
                  color=["tab:gray" if not r["system"].startswith("clsx") else "tab:blue"
                         for r in chosen])
        axis.set_title(f"{model}, {workload} texts")
        axis.set_xlabel("rows/s")
        axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                        help="minilm=DIR or smollm2=DIR: a trained clsx model (default: the "
                             "bundled base with an untrained head)")
    parser.add_argument("--models", default="minilm,smollm2",
                        help="which models to run (the others keep their stored rows)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply ROWS by this")
    parser.add_argument("--no-vllm", action="store_true", help="skip vLLM (direct and clsx)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite throughput.md and .png from throughput.json; run nothing")
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.model)
    try:
        import vllm  # noqa: F401

        use_vllm = not args.no_vllm
    except ImportError:
        use_vllm = False
        print("vllm is not installed: vLLM rows are skipped", flush=True)
    rows, runs = stored_results()
    if args.report_only:
        report(rows, runs)
        return
    native_bf16 = "bf16" in native_low_precision("cpu")
    peaks = {"fp32": matmul_peak("fp32"), "bf16": matmul_peak("bf16") if native_bf16 else None,
             "int8": int8_matmul_peak()}
    print(f"matmul peak GFLOP/s: {peaks}", flush=True)
    with tempfile.TemporaryDirectory(prefix="clsx-throughput-") as temporary:
        root = Path(temporary)
        for name in args.models.split(","):
            alias = {"minilm": "minilm-l6", "smollm2": "smollm2-135m"}[name]
            model_dir = (Path(given[name]) if name in given
                         else untrained_classifier(alias, root / name, LONG_TOKENS))
            measured = measure_model(name, model_dir, root, args.scale, peaks, use_vllm)
            rows = [row for row in rows if row["model"] != name] + measured
            runs[name] = {"command": " ".join(["python", *sys.argv]), "peaks_gflops": peaks}
            report(rows, runs)  # after each model


def stored_results() -> tuple[list[dict], dict[str, dict]]:
    """Rows and runs of throughput.json measured on this machine: a run of some models keeps
    the other models' rows."""
    path = RESULTS / "throughput.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    if stored.get("machine") != machine_description() or "runs" not in stored:
        return [], {}
    return stored["rows"], stored["runs"]


def report(rows: list[dict], runs: dict[str, dict]) -> None:
    """Write throughput.{json,md,png} into benchmarks/results/ and print the table."""
    text = markdown(rows, runs)
    save("throughput", {"machine": machine_description(), "runs": runs, "rows": rows}, text)
    chart(rows, RESULTS / "throughput.png")
    print(text)


if __name__ == "__main__":
    main()
