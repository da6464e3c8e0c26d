"""``clsx batch-predict``: classify a Parquet file (or many) into a new Parquet file."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from clsx.errors import ClsxError
from clsx.parquet import (
    AtomicParquetWriter,
    ParquetInput,
    check_output,
    iter_batches,
    open_input,
    text_values,
)
from clsx.pipeline import Pipeline
from clsx.postprocess import DEFAULT_THRESHOLD, prediction_columns
from clsx.runners import RunnerOptions

PREDICTION_FIELDS = (
    ("label", pa.string()),
    ("score", pa.float32()),
    ("probs", pa.list_(pa.float32())),
)


@dataclass(frozen=True)
class BatchPredictConfig:
    """Every option of ``clsx batch-predict``; the CLI maps its flags 1:1 onto these fields."""

    input: str
    output: Path
    model: Path
    backend: str = "auto"
    text_column: str = "text"
    keep_columns: tuple[str, ...] | None = None
    overwrite: bool = False
    batch_tokens: int | None = None
    window_rows: int = 4096
    max_length: int | None = None
    output_prefix: str = ""
    threshold: float = DEFAULT_THRESHOLD
    device: str = "auto"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "window_rows", "max_length", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ClsxError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not 0.0 < self.threshold < 1.0:
            raise ClsxError(f"--threshold must be between 0 and 1, got {self.threshold}")


@dataclass(frozen=True)
class Summary:
    """What a batch-predict run did, for the final one-line report."""

    rows: int
    null_rows: int
    truncated: int
    tokens: int
    seconds: float
    backend: str
    output: Path

    def line(self) -> str:
        seconds = max(self.seconds, 1e-9)
        return (
            f"{self.rows} rows in {self.seconds:.1f} s: {self.rows / seconds:.1f} rows/s, "
            f"{self.tokens / seconds:.0f} tokens/s, backend {self.backend}; "
            f"{self.null_rows} null texts, {self.truncated} truncated; wrote {self.output}"
        )


def batch_predict(config: BatchPredictConfig) -> Summary:
    """Classify ``config.input`` into ``config.output``; the output appears only when complete."""
    source = open_input(config.input, config.text_column, config.keep_columns)
    output_schema = _output_schema(source, config.output_prefix)
    check_output(config.output, source, config.overwrite)
    pipeline = Pipeline.open(
        config.model,
        config.backend,
        RunnerOptions(device=config.device, threads=config.threads),
        config.batch_tokens,
        config.max_length,
    )
    manifest = pipeline.artifact.manifest
    batches = iter_batches(source, config.window_rows)
    kept = source.schema.names
    rows = null_rows = truncated = tokens = 0
    started = time.perf_counter()
    progress = _progress_bar(source.num_rows, config.progress)
    try:
        with AtomicParquetWriter(config.output, output_schema) as writer:
            items = ((batch, text_values(batch, config.text_column)) for batch in batches)
            for batch, window, logits in pipeline.run(items):
                columns = prediction_columns(logits, manifest, config.threshold)
                arrays = [batch.column(name) for name in kept] + list(columns.values())
                writer.write(pa.RecordBatch.from_arrays(arrays, schema=output_schema))
                rows += batch.num_rows
                null_rows += sum(1 for ids in window.ids if ids is None)
                truncated += window.truncated
                tokens += window.tokens
                progress.update(batch.num_rows)
    finally:
        progress.close()
    return Summary(
        rows, null_rows, truncated, tokens, time.perf_counter() - started,
        pipeline.runner.description, config.output,
    )


def _output_schema(source: ParquetInput, prefix: str) -> pa.Schema:
    fields = [pa.field(prefix + name, arrow_type) for name, arrow_type in PREDICTION_FIELDS]
    clashes = [f.name for f in fields if f.name in source.schema.names]
    if clashes:
        raise ClsxError(
            f"the input already has column {', '.join(map(repr, clashes))}; pass "
            "--output-prefix pred_ (or --keep-columns without it) to keep both"
        )
    return pa.schema(list(source.schema) + fields)


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, unit=" rows", file=sys.stderr, disable=not enabled, mininterval=1.0,
        dynamic_ncols=True, smoothing=0.1,
    )
