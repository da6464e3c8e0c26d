"""``clsx batch-predict``: classify a Parquet file (or many) into a new Parquet file."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from clsx.artifact import fingerprint
from clsx.errors import ClsxError
from clsx.manifest import Manifest
from clsx.parquet import (
    ParquetInput,
    check_output_location,
    iter_batches,
    open_input,
    text_values,
)
from clsx.parts import PartStore, PartWriter
from clsx.pipeline import Pipeline
from clsx.postprocess import prediction_columns
from clsx.runners import RunnerOptions

PREDICTION_FIELDS = (
    ("label", pa.string()),
    ("score", pa.float32()),
    ("probs", pa.list_(pa.float32())),
)


WINDOWS_FIELD = "windows"  # --windows-column: model inputs per row
OUTPUT_FORMATS = ("file", "dataset")
PART_SECONDS = 120.0  # a part is committed at least this often, whatever --part-rows says


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
    resume: bool = False
    output_format: str | None = None  # file (local engine default) or dataset
    part_rows: int = 100_000
    batch_tokens: int | None = None
    window_rows: int = 4096
    max_length: int | None = None
    long_text: str | None = None  # None: the manifest's long-text setting, field by field
    window_stride: int | None = None
    aggregate: str | None = None
    windows_column: bool = False
    output_prefix: str = ""
    threshold: float | None = None  # None: the model's tuned per-label thresholds, else 0.5
    device: str = "auto"
    threads: int | None = None
    dtype: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    memory_fraction: float | None = None
    allow_pickle: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "window_rows", "max_length", "threads", "part_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ClsxError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ClsxError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise ClsxError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}")

    def runner_options(self) -> RunnerOptions:
        """How the backend should run: device, threads and the vLLM engine settings."""
        return RunnerOptions(device=self.device, threads=self.threads, dtype=self.dtype,
                             max_num_seqs=self.max_num_seqs,
                             max_num_batched_tokens=self.max_num_batched_tokens,
                             memory_fraction=self.memory_fraction)

    def long_text_override(self) -> dict[str, Any]:
        """The long-text fields given on the command line (None: the manifest's)."""
        return {"strategy": self.long_text, "stride": self.window_stride,
                "aggregate": self.aggregate}

    def open_pipeline(self, threads: int | None = None) -> Pipeline:
        """The model, backend and encoder these options ask for."""
        options = self.runner_options()
        if threads is not None:
            options = replace(options, threads=threads)
        return Pipeline.open(self.model, self.backend, options, self.batch_tokens,
                             self.max_length, allow_pickle=self.allow_pickle,
                             long_text=self.long_text_override())

    def checked_input(self) -> tuple[ParquetInput, pa.Schema]:
        """The validated input and the output schema; refuses an empty input and an OUT
        that a later run over the same input would read."""
        source = open_input(self.input, self.text_column, self.keep_columns)
        if source.num_rows == 0:
            raise ClsxError(f"input {self.input} has 0 rows; there is nothing to classify")
        schema = output_schema(source, self.output_prefix, self.windows_column)
        check_output_location(self.output, self.input, source)
        return source, schema

    def job(self, source: ParquetInput, model_fingerprint: str) -> dict[str, Any]:
        """Everything that decides OUT's content: a resume must match it exactly."""
        inputs = [[str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]
                  for path in source.files]
        options = ("backend", "text_column", "keep_columns", "window_rows", "batch_tokens",
                   "max_length", "long_text", "window_stride", "aggregate", "windows_column",
                   "output_prefix", "threshold", "device", "threads", "output_format", "dtype")
        return {"inputs": inputs, "model": str(self.model.resolve()),
                "model_fingerprint": model_fingerprint,
                **{name: _json_value(getattr(self, name)) for name in options}}


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
    resumed_rows: int = 0
    already_complete: bool = False
    counted: bool = True  # False where tokens, nulls and truncation were not counted (Ray)

    def line(self) -> str:
        if self.already_complete:
            return f"{self.output} is already complete; nothing to do"
        seconds = max(self.seconds, 1e-9)
        if not self.counted:
            return (f"{self.rows} rows in {self.seconds:.1f} s: {self.rows / seconds:.1f} "
                    f"rows/s, backend {self.backend}; wrote {self.output}")
        resumed = f" (continued after {self.resumed_rows} rows)" if self.resumed_rows else ""
        return (
            f"{self.rows} rows in {self.seconds:.1f} s{resumed}: {self.rows / seconds:.1f} "
            f"rows/s, {self.tokens / seconds:.0f} tokens/s, backend {self.backend}; "
            f"{self.null_rows} null texts, {self.truncated} truncated; wrote {self.output}"
        )


@dataclass
class _Counts:
    rows: int = 0
    null_rows: int = 0
    truncated: int = 0
    tokens: int = 0


def batch_predict(config: BatchPredictConfig) -> Summary:
    """Classify ``config.input`` into ``config.output``; the output appears only when complete.

    Work is committed in part files beside OUT (see :mod:`clsx.parts`), so a killed run
    continues with ``resume`` where it stopped.
    """
    source, schema = config.checked_input()
    store = PartStore(config.output)
    with store.locked():  # one writer per OUT, from the job check to the clean-up
        if not _claim_output(config, store):
            return Summary(0, 0, 0, 0, 0.0, config.backend, config.output, already_complete=True)
        pipeline = config.open_pipeline()
        store.start(config.job(source, fingerprint(pipeline.artifact.path)))
        parts = store.parts()
        resumed_rows = sum(part.rows for part in parts)
        started = time.perf_counter()
        counts = _Counts()
        if not store.is_done():
            next_window = parts[-1].last + 1 if parts else 0
            _predict_into_parts(config, source, pipeline, store, schema, next_window,
                                resumed_rows, counts)
            store.mark_done(resumed_rows + counts.rows)
        if config.output_format == "dataset":
            store.publish_dataset()
        else:
            store.assemble(schema)
        return Summary(counts.rows, counts.null_rows, counts.truncated, counts.tokens,
                       time.perf_counter() - started, pipeline.runner.description,
                       config.output, resumed_rows)


def _claim_output(config: BatchPredictConfig, store: PartStore) -> bool:
    """Decide what to do with an existing OUT or parts; False when OUT is already complete."""
    output = config.output
    if config.output_format != "dataset" and output.is_dir():
        raise ClsxError(f"output {output} is a directory; give a file path ending in .parquet "
                        "(or pass --output-format dataset)")
    if config.output_format == "dataset" and output.is_file():
        raise ClsxError(f"output {output} is a file; --output-format dataset writes a directory")
    if store.exists():
        if config.resume:
            return True
        if not config.overwrite:
            rows = store.committed_rows()
            raise ClsxError(
                f"an interrupted run left {rows} classified rows in {store.directory}; rerun "
                "the same command with --resume to continue it, or add --overwrite to start over"
            )
        store.remove()
    if output.exists():
        if config.resume:
            return False
        if not config.overwrite:
            raise ClsxError(f"output {output} exists; pass --overwrite to replace it")
    return True


def _predict_into_parts(config: BatchPredictConfig, source: ParquetInput, pipeline: Pipeline,
                        store: PartStore, schema: pa.Schema, next_window: int,
                        resumed_rows: int, counts: _Counts) -> None:
    """Classify windows ``next_window..`` and commit them as parts; counts what it did."""
    manifest = pipeline.artifact.manifest
    pending = ((index, batch) for index, batch in enumerate(iter_batches(source,
               config.window_rows)) if index >= next_window)
    items = (((index, batch), text_values(batch, config.text_column))
             for index, batch in pending)
    progress = _progress_bar(source.num_rows, resumed_rows, config.progress)
    writer: PartWriter | None = None
    part_started = time.monotonic()
    try:
        for (index, batch), window, logits in pipeline.run(items):
            if writer is None:
                writer, part_started = store.writer(index, schema), time.monotonic()
            arrays = output_arrays(batch, source.schema.names, logits, manifest,
                                   config.threshold,
                                   window.inputs_per_row() if config.windows_column else None)
            writer.write(pa.RecordBatch.from_arrays(arrays, schema=schema))
            counts.rows += batch.num_rows
            counts.null_rows += sum(1 for ids in window.ids if ids is None)  # one input each
            counts.truncated += window.truncated
            counts.tokens += window.tokens
            progress.update(batch.num_rows)
            if (writer.rows >= config.part_rows
                    or time.monotonic() - part_started >= PART_SECONDS):
                writer.commit(index)
                writer = None
        if writer is not None:
            writer.commit(index)
            writer = None
    except BaseException as exc:
        if writer is not None:
            writer.discard()
        saved = resumed_rows + counts.rows - (writer.rows if writer is not None else 0)
        if not isinstance(exc, (ClsxError, KeyboardInterrupt)):
            raise
        if saved == 0:
            store.remove()
            raise
        hint = (f"{saved} classified rows are saved in {store.directory}; rerun the same "
                "command with --resume to continue")
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt(f"Interrupted; {hint}.") from exc
        raise ClsxError(f"{exc}; {hint}") from exc
    finally:
        progress.close()


def output_schema(source: ParquetInput, prefix: str, windows_column: bool = False) -> pa.Schema:
    """The kept input columns followed by the (prefixed) prediction columns."""
    fields = [pa.field(prefix + name, arrow_type) for name, arrow_type in PREDICTION_FIELDS]
    if windows_column:
        fields.append(pa.field(prefix + WINDOWS_FIELD, pa.int32()))
    clashes = [f.name for f in fields if f.name in source.schema.names]
    if clashes:
        raise ClsxError(
            f"the input already has column {', '.join(map(repr, clashes))}; pass "
            "--output-prefix pred_ (or --keep-columns without it) to keep both"
        )
    return pa.schema(list(source.schema) + fields)


def output_arrays(batch: pa.RecordBatch | pa.Table, kept: list[str], logits: np.ndarray,
                  manifest: Manifest, threshold: float | None, windows: np.ndarray | None = None
                  ) -> list:
    """The columns of one output batch: the kept input columns, then the predictions (and
    the model inputs per row, where ``windows`` is given)."""
    columns = list(prediction_columns(logits, manifest, threshold).values())
    if windows is not None:
        columns.append(pa.array(windows, pa.int32()))
    return [batch.column(name) for name in kept] + columns


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _progress_bar(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=done, unit=" rows", file=sys.stderr, disable=not enabled,
        mininterval=1.0, dynamic_ncols=True, smoothing=0.1,
    )
