"""``clsx bench``: the same rows through every backend in one process, against torch fp32."""

from __future__ import annotations

import gc
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from clsx import durable
from clsx.artifact import fingerprint
from clsx.errors import ClsxError
from clsx.export.parity import compare
from clsx.manifest import Manifest
from clsx.pipeline import Pipeline
from clsx.runners import RunnerOptions
from clsx.runners.tensorrt import require_tensorrt

VARIANTS = ("torch", "torch-bf16", "onnx", "onnx-int8", "tensorrt")
REFERENCE = "torch"
# torch variants run the model directory itself in a dtype; the others run an export, with
# the backend its format names (``auto``).
TORCH_DTYPES = {"torch": "fp32", "torch-bf16": "bf16"}


@dataclass(frozen=True)
class BenchRow:
    """One backend's measurement on the shared rows."""

    variant: str
    backend: str
    rows: int
    seconds: float
    rows_per_s: float
    tokens_per_s: float
    peak_rss_mb: float
    label_agreement: float | None
    max_abs_diff: float
    speedup: float


def run_bench(
    model_dir: Path,
    texts: Sequence[str | None],
    variants: Sequence[str] = VARIANTS,
    exports_dir: Path | None = None,
    options: RunnerOptions | None = None,
    batch_tokens: int | None = None,
    log: Callable[[str], None] = print,
) -> list[BenchRow]:
    """Measure each variant on ``texts``; torch fp32 always runs first as the reference.

    ``torch-bf16`` runs the same model directory in bf16 (native with AMX / AVX-512 BF16,
    emulated and slower than fp32 elsewhere).

    ONNX variants are exported on the fly into ``exports_dir`` (a temporary directory when
    None) and reused there when the parent model has not changed.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ClsxError(f"unknown backend {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    options = options or RunnerOptions()
    if "tensorrt" in variants:  # before minutes of exporting and measuring the others
        require_tensorrt("--backends tensorrt", options.device)
    ordered = [REFERENCE, *[v for v in dict.fromkeys(variants) if v != REFERENCE]]
    with _exports_dir(exports_dir) as cache:
        reference: np.ndarray | None = None
        rows: list[BenchRow] = []
        for variant in ordered:
            if variant in TORCH_DTYPES:
                directory, backend = model_dir, "torch"
                variant_options = replace(options, dtype=TORCH_DTYPES[variant])
            else:
                directory, backend = _export(model_dir, variant, cache, log), "auto"
                variant_options = options
            log(f"bench: running {variant} on {len(texts)} rows")
            with _peak_rss() as peak:
                pipeline = Pipeline.open(directory, backend, variant_options, batch_tokens)
                pipeline.classify(texts[:64])  # warm-up: first-call allocations and kernels
                started = time.perf_counter()
                logits, tokens = pipeline.classify_counting(texts)
                seconds = time.perf_counter() - started
            reference = logits if reference is None else reference
            parity = _compare(reference, logits, pipeline.artifact.manifest)
            baseline = rows[0].rows_per_s if rows else len(texts) / seconds
            rows.append(BenchRow(
                variant=variant,
                backend=pipeline.runner.description,
                rows=len(texts),
                seconds=round(seconds, 3),
                rows_per_s=round(len(texts) / seconds, 1),
                tokens_per_s=round(tokens / seconds, 1),
                peak_rss_mb=round(peak() / 2**20, 1),
                label_agreement=parity.label_agreement,
                max_abs_diff=parity.max_abs_diff,
                speedup=round(len(texts) / seconds / baseline, 2),
            ))
            del pipeline
            gc.collect()
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    """A fixed-width table of the rows for the terminal."""
    header = ("variant", "backend", "rows/s", "tokens/s", "peak RSS MB", "agreement",
              "max |dlogit|", "x torch")
    body = [
        (r.variant, r.backend, f"{r.rows_per_s:.1f}", f"{r.tokens_per_s:.0f}",
         f"{r.peak_rss_mb:.0f}",
         "n/a" if r.label_agreement is None else f"{r.label_agreement:.2%}",
         f"{r.max_abs_diff:.2e}", f"{r.speedup:.2f}")
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(results: Sequence[BenchRow], path: Path, **context: object) -> None:
    """Write the results and the run's context (model, data, machine) as JSON."""
    payload = {**context, "results": [asdict(r) for r in results]}
    durable.write_file(path, json.dumps(payload, indent=2, default=str) + "\n")


def _compare(reference: np.ndarray, logits: np.ndarray, manifest: Manifest):
    present = ~np.isnan(reference).any(axis=1)
    return compare(reference[present], logits[present], manifest.problem_type)


def _export(model_dir: Path, variant: str, cache: Path, log: Callable[[str], None]) -> Path:
    from clsx.export.onnx import export_onnx

    target = cache / variant
    if target.is_dir():
        manifest = Manifest.load(target)
        if manifest is not None and manifest.parent_fingerprint == fingerprint(model_dir):
            return target
    log(f"bench: exporting {model_dir} to {variant} in {target}")
    export_onnx(model_dir, target, fmt=variant, overwrite=True, min_agreement=0.0)
    return target


@contextmanager
def _exports_dir(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="clsx-bench-") as temporary:
        yield Path(temporary)


@contextmanager
def _peak_rss(interval: float = 0.05) -> Iterator[Callable[[], int]]:
    """Sample this process's resident set size in a thread; yields a getter for the peak."""
    import psutil

    process = psutil.Process()
    peak = [process.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)
