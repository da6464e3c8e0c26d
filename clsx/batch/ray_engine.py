"""``clsx batch-predict --engine ray``: the same pipeline on Ray Data, one model per actor.

``ray.data.read_parquet`` -> ``map_batches`` with :class:`Predictor` (an actor pool, one
model replica per actor, ``num_gpus`` each) -> ``write_parquet`` into a dataset directory.
Each actor holds one :class:`~clsx.inference.classifier.Classifier`, the object the local
engine uses, so the values are the same; Ray does the distribution, clsx adds no scheduler
of its own. The driver holds the local engine's one-writer lock on OUT for the whole job,
and the actors' counters (tokens, nulls, truncated, windows, re-checked) are summed in a
:class:`Tally` actor into the local engine's summary line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clsx.artifacts.artifact import open_artifact
from clsx.artifacts.remote import local_model
from clsx.batch.config import BatchPredictConfig, RayOptions
from clsx.batch.local_engine import (
    check_fallback_model,
    checked_input,
    open_classifier,
    output_schema,
    pin_auto_format,
    pin_fallback,
    pin_recheck,
)
from clsx.batch.parts import open_store
from clsx.batch.summary import Summary
from clsx.errors import ClsxError, os_error
from clsx.inference.classifier import Counts
from clsx.inference.hardware import physical_cores
from clsx.inference.runners import backend_for
from clsx.io.parquet import ParquetInput, parquet_file, python_strings
from clsx.io.staging import refuse_existing, staged_location
from clsx.io.storage import Location, upload
from clsx.log import Log, silent

ACTOR_THREADS = 1  # compute threads per actor unless --threads: replicas scale out, not up


class Tally:
    """The job's counters (a Ray actor): every :class:`Predictor` adds each batch's."""

    def __init__(self) -> None:
        self.counts = Counts()

    def add(self, counts: Counts) -> None:
        self.counts.add(counts)

    def total(self) -> Counts:
        return self.counts


class Predictor:
    """One model replica (a Ray actor): an Arrow batch in, its kept columns plus predictions
    out; its counters go to ``tally``."""

    def __init__(self, config: BatchPredictConfig, kept: list[str], schema: pa.Schema,
                 tally: object) -> None:
        if config.model_source is not None and not Path(config.model).is_dir():
            # Another node than the driver's: the model's URI, fetched into its clsx cache.
            config = replace(config, model=local_model(config.model_source,
                                                       config.storage_options))
        artifact = open_artifact(config.model, allow_pickle=config.allow_pickle)
        self.classifier = open_classifier(config, artifact,
                                          threads=config.threads or ACTOR_THREADS)
        self.text_column = config.text_column
        self.kept = kept
        self.schema = schema
        self.tally = tally
        self.ray = _import_ray()

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = python_strings(batch.column(self.text_column), self.text_column)
        prediction = self.classifier.predict(texts)
        # Waited for: the driver reads the total once the last batch is written.
        self.ray.get(self.tally.add.remote(prediction.counts))
        arrays = [batch.column(name) for name in self.kept] + prediction.columns
        return pa.Table.from_arrays(arrays, schema=self.schema)


def ray_batch_predict(config: BatchPredictConfig, options: RayOptions,
                      progress: bool = False, log: Log = silent) -> Summary:
    """Classify ``config.input`` on Ray into the dataset directory ``config.output``;
    ``progress`` turns on Ray Data's own progress bars; ``log`` gets status lines
    (``--backend auto``'s format search, done here once for every actor)."""
    ray = _import_ray()
    if config.resume:
        raise ClsxError("--resume works with the local engine only; Ray retries failed tasks "
                        "itself, and a failed Ray job leaves nothing at OUT")
    if config.output_format == "file":
        raise ClsxError("--engine ray writes OUT as a dataset directory of Parquet parts; drop "
                        "--output-format file")
    source = checked_input(config)
    output = config.output_location()
    if output.is_file():
        raise ClsxError(f"output {output} is a file; --engine ray writes a directory")
    with open_store(output).locked():  # one writer per OUT, as the local engine
        return _ray_batch_predict(ray, config, options, source, output, progress, log)


def _ray_batch_predict(ray, config: BatchPredictConfig, options: RayOptions,
                       source: ParquetInput, output: Location, progress: bool, log: Log
                       ) -> Summary:
    artifact = open_artifact(config.model, allow_pickle=config.allow_pickle)
    schema = output_schema(config, source, artifact)
    refuse_existing(output, config.overwrite)  # before the format search and Ray's start-up
    backend_for(artifact, config.backend)  # a bad model or backend fails here, not in an actor
    check_fallback_model(config, artifact)
    pinned = pin_auto_format(config, source, artifact, threads=config.threads or ACTOR_THREADS,
                             log=log)
    if pinned.config.model != config.model:  # an export in the driver's cache: not the URI's
        config = replace(pinned.config, model_source=None)
    else:
        config = pinned.config
    config = _pin_cuts(config, source, log)
    started = time.perf_counter()
    _start_ray(ray, options.address,
               options.num_workers * (config.threads or ACTOR_THREADS))
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = options.preserve_order
    context.enable_progress_bars = progress
    columns = list(dict.fromkeys([*source.schema.names, config.text_column]))
    context.target_max_block_size = _window_bytes(source, config.window_rows)
    # Ray pickles the file system to its workers: credentials come from their environment.
    dataset = ray.data.read_parquet([path.path for path in source.files], columns=columns,
                                    filesystem=source.root.filesystem)
    tally = ray.remote(Tally).options(num_cpus=0).remote()  # no CPU slot: it only adds
    predicted = dataset.map_batches(
        Predictor,
        fn_constructor_kwargs={"config": config, "kept": source.schema.names, "schema": schema,
                               "tally": tally},
        batch_size=config.window_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=options.num_workers),
        num_cpus=config.threads or ACTOR_THREADS,
        num_gpus=options.gpus_per_worker or None,
    )
    with staged_location(output, config.overwrite) as stage:
        if options.preserve_order:
            _write_in_order(predicted, stage, config.part_rows)
        else:
            # OVERWRITE: the staging directory is new, and names need no write-uuid in them.
            predicted.write_parquet(stage.path, filesystem=stage.filesystem,
                                    filename_provider=_part_names(),
                                    mode=ray.data.SaveMode.OVERWRITE)
        rows = 0
        for path in stage.files():
            if path.name.endswith(".parquet"):
                with parquet_file(path) as file:
                    rows += file.metadata.num_rows
        if rows != source.num_rows:  # raised inside the stage: OUT is not published
            raise ClsxError(f"Ray wrote {rows} rows but read {source.num_rows} from "
                            f"{config.input}; {output} was not written")
    counts = ray.get(tally.total.remote())
    backend = f"{config.backend} on ray ({options.num_workers} workers)"
    if pinned.because is not None:
        backend += f", {pinned.because}"
    return Summary(rows, time.perf_counter() - started, backend, config.output, counts,
                   recheck_margin=config.recheck_margin,
                   fallback_margin=config.fallback_margin)


def _pin_cuts(config: BatchPredictConfig, source: ParquetInput, log: Log
              ) -> BatchPredictConfig:
    """``config`` with the re-check's and the cascade's cuts every actor runs with, chosen
    here once; the driver opens the model for them unless neither can apply."""
    if config.recheck is False and config.fallback_model is None:
        return config
    artifact = open_artifact(config.model, allow_pickle=config.allow_pickle)
    with open_classifier(config, artifact, threads=config.threads or ACTOR_THREADS) as model:
        return replace(config, recheck_margin=pin_recheck(config, source, model, log=log),
                       fallback_margin=pin_fallback(config, source, model, log=log))


def _window_bytes(source: ParquetInput, window_rows: int) -> int:
    """Blocks of about one window: Ray Data's default (128 MiB blocks) would hand a whole
    small file to one actor while the others wait."""
    with parquet_file(source.files[0]) as file:
        metadata = file.metadata
    size = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    return max(1 << 16, size // max(metadata.num_rows, 1) * window_rows)


def _start_ray(ray, address: str | None, actor_cpus: int) -> None:
    """Connect to ``address``, or start a local instance sized for the actors.

    A local instance gets one logical CPU more than the actors take: Ray Data's file listing
    and read tasks need a CPU slot too, and with every slot held by an actor the job would
    wait forever. Those tasks are light, so the extra slot hardly oversubscribes the cores.
    """
    local = {} if address else {"num_cpus": max(physical_cores(), actor_cpus) + 1}
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False, **local)


def _part_names():
    """File names ``part-000042-0.parquet``, one per write task (in no particular order)."""
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:06d}.parquet"

    return PartNames()


def _write_in_order(predicted, stage: Location, part_rows: int) -> None:
    """Write ``part-000000.parquet``, ``part-000001.parquet``, ... of ``part_rows`` rows each
    from the driver, in the order Ray hands the rows out.

    Ray Data documents input order under ``preserve_order`` for a dataset's consumer, not
    for the names ``write_parquet`` gives its files (which once came out of order in CI),
    so the ordered output is consumed, and written, here.
    """
    batches = predicted.iter_batches(batch_format="pyarrow", batch_size=part_rows)
    for index, batch in enumerate(batches):
        path = stage.child(f"part-{index:06d}.parquet")
        try:
            if path.is_local:
                pq.write_table(batch, path.local_path)
            else:
                buffer = pa.BufferOutputStream()
                pq.write_table(batch, buffer)
                upload(buffer.getvalue(), path)
        except OSError as exc:
            raise os_error("writing", path, exc) from exc


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ClsxError("--engine ray needs Ray Data: pip install 'clsx[ray]' "
                        "(or 'ray[data]')") from exc
    return ray

