"""The options of ``clsx batch-predict``, each with its one default.

Light on purpose (no pyarrow, no torch): ``--help`` reads the defaults from here, and the CLI
passes only the options a user gave (a flag left out is a field left at its default).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clsx.errors import ClsxError
from clsx.evaluation.config import LongTextOverride
from clsx.inference.runners import BACKENDS
from clsx.inference.runners.base import DEVICES, DTYPES, RunnerOptions
from clsx.inference.scheduler import WINDOW_ROWS
from clsx.log import Log, silent
from clsx.quality import MAX_LABEL_CHANGES

if TYPE_CHECKING:
    from clsx.io.parquet import ParquetInput
    from clsx.io.storage import Location

OUTPUT_FORMATS = ("file", "dataset")
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BatchPredictConfig(LongTextOverride):
    """Every option of ``clsx batch-predict``; the CLI maps its flags 1:1 onto these fields,
    and these defaults are the only ones (a flag left out is a field left at its default).

    ``threads`` None is one compute thread per physical core for the local engine, one per
    actor on Ray. ``threshold`` None is the model's tuned per-label thresholds, else 0.5.
    ``input`` and ``output`` are local paths or object-store URIs; ``storage_options``
    (``key=value``) configure the URIs' file system (:mod:`clsx.io.storage`). ``model`` is a
    directory or its URI on object storage, which :func:`~clsx.batch.run.run_batch_predict`
    fetches into the clsx cache (:mod:`clsx.artifacts.remote`), keeping the URI in
    ``model_source`` for Ray's actors to fetch on their own nodes.
    """

    input: str
    output: str | Path
    model: Path | str
    backend: str = "auto"
    text_column: str = "text"
    keep_columns: tuple[str, ...] | None = None
    overwrite: bool = False
    resume: bool = False
    output_format: str | None = None  # file (local engine default) or dataset
    part_rows: int = 100_000
    batch_tokens: int | None = None
    window_rows: int = WINDOW_ROWS
    max_length: int | None = None
    long_text: str | None = None  # None: the manifest's long-text setting, field by field
    window_stride: int | None = None
    aggregate: str | None = None
    windows_column: bool = False
    output_prefix: str = ""
    threshold: float | None = None
    device: str = "auto"
    threads: int | None = None
    dtype: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    memory_fraction: float | None = None
    allow_pickle: bool = False
    storage_options: tuple[str, ...] = ()
    auto_formats: bool | None = None  # None: when IN has FORMAT_SEARCH_MIN_ROWS rows or more
    recheck: bool | None = None  # None: on wherever the run computes below fp32
    max_label_changes: float = MAX_LABEL_CHANGES
    fallback_model: Path | None = None
    fallback_agreement: float = 0.995
    # Pinned by the driver, never flags: the cuts every replica runs with, the model's URI
    # where it came from object storage (``model`` is then the driver's copy), and the
    # fallback model's own config with its format and re-check cut pinned (None: plain
    # --backend auto on the fallback model).
    recheck_margin: float | None = None
    fallback_margin: float | None = None
    model_source: str | None = None
    fallback_config: BatchPredictConfig | None = None

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "window_rows", "max_length", "threads", "part_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ClsxError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ClsxError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if not 0.0 < self.fallback_agreement <= 1.0:
            raise ClsxError("--fallback-agreement must be in (0, 1], got "
                            f"{self.fallback_agreement}")
        if not 0.0 < self.max_label_changes < 1.0:
            raise ClsxError("--max-label-changes must be between 0 and 1, got "
                            f"{self.max_label_changes}")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise ClsxError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}")
        # The CLI's choices check these already; the Python API (clsx.load) passes them through.
        for name, value, allowed in (("backend", self.backend, BACKENDS),
                                     ("device", self.device, DEVICES),
                                     ("dtype", self.dtype, (None, *DTYPES))):
            if value not in allowed:
                raise ClsxError(f"--{name} must be one of "
                                f"{', '.join(str(a) for a in allowed if a)}, got {value!r}")

    def runner_options(self) -> RunnerOptions:
        """How the backend should run: device, threads and the vLLM engine settings."""
        return RunnerOptions(device=self.device, threads=self.threads, dtype=self.dtype,
                             max_num_seqs=self.max_num_seqs,
                             max_num_batched_tokens=self.max_num_batched_tokens,
                             memory_fraction=self.memory_fraction)

    def with_local_model(self, log: Log = silent) -> BatchPredictConfig:
        """This config with ``model`` a local directory: a URI's copy in the clsx cache
        (fetched once per machine), the URI kept in ``model_source``."""
        from clsx.artifacts.remote import local_model
        from clsx.io.storage import is_uri

        if not is_uri(self.model):  # a path (or the copy a URI was already fetched to)
            return replace(self, model=Path(self.model))
        return replace(self, model=local_model(self.model, self.storage_options, log),
                       model_source=str(self.model))

    def fallback_alone(self) -> BatchPredictConfig:
        """How ``--fallback-model`` runs: as ``batch-predict --model FALLBACK`` alone would
        on this job's input and hardware (``--backend auto``: its own format search, dtype,
        re-check and long-text settings; the job's threads, device, batches, threshold and
        re-check options)."""
        if self.fallback_model is None:
            raise ValueError("the job has no --fallback-model")
        return replace(self, model=self.fallback_model, backend="auto", dtype=None,
                       max_length=None, long_text=None, window_stride=None, aggregate=None,
                       fallback_model=None, recheck_margin=None, fallback_margin=None,
                       model_source=None, fallback_config=None)

    def output_location(self) -> Location:
        """Where OUT goes."""
        from clsx.io.storage import location

        return location(self.output, self.storage_options)

    def job(self, source: ParquetInput, model_fingerprint: str, engine: str
            ) -> dict[str, Any]:
        """Everything the options and the ``engine`` decide about OUT's content (and its
        journal): a resume must match it exactly.

        Inputs are recorded by path or URI (never with credentials, which no URI holds),
        size and modification time; storage options are not recorded. It is known before
        the model loads, so that a resume with other settings is refused at once. Four more
        keys join it once known: :data:`RECHECK_MARGIN` and :data:`FALLBACK_MARGIN`, the
        re-check's and the cascade's cuts, :data:`AUTO_FORMAT`, the format
        ``--backend auto``'s search chose, and :data:`FALLBACK`, the fallback model's own
        format and re-check cut. A resume does
        not search again but runs the format its journal records (see
        :func:`clsx.batch.local_engine.pin_auto_format`), so that every row of OUT comes
        from one format even where this machine's remembered choice was lost or differs.
        """
        inputs = [[path.key(), info.size, info.mtime_ns]
                  for path, info in ((path, path.info()) for path in source.files)]
        options = ("backend", "text_column", "keep_columns", "window_rows", "batch_tokens",
                   "max_length", "long_text", "window_stride", "aggregate", "windows_column",
                   "output_prefix", "threshold", "device", "threads", "output_format", "dtype",
                   "auto_formats", "recheck", "max_label_changes", "fallback_agreement")
        fallback = None if self.fallback_model is None else str(self.fallback_model.resolve())
        return {"inputs": inputs, "engine": engine, "model": str(self.model.resolve()),
                "model_fingerprint": model_fingerprint, "fallback_model": fallback,
                **{name: _json_value(getattr(self, name)) for name in options}}


# The job record's key for the format --backend auto's search chose (None: no search ran).
AUTO_FORMAT = "auto_format"
# The job record's key for the re-check cut (None: the job does not re-check).
RECHECK_MARGIN = "recheck_margin"
# The job record's key for the cascade's cut (None: no --fallback-model).
FALLBACK_MARGIN = "fallback_margin"
# The job record's key for what was pinned for the fallback model alone: its own
# AUTO_FORMAT and RECHECK_MARGIN (None: no --fallback-model).
FALLBACK = "fallback"


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run: cluster address, model replicas, GPUs per replica."""

    address: str | None = None
    num_workers: int = 1
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ClsxError(f"--num-workers must be >= 1, got {self.num_workers}")
        if self.gpus_per_worker < 0:
            raise ClsxError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
