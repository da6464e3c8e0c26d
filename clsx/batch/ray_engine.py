"""``clsx batch-predict --engine ray``: the local engine's job, its windows classified by a
pool of Ray actors, one model replica each.

The driver does what the local engine does around the model: it holds the one-writer lock
on OUT, checks the job against OUT's journal (``OUT.parts/``, :mod:`clsx.batch.parts.store`),
pins ``--backend auto``'s format and the cuts, reads IN as the same numbered windows, and
commits every result as a part named after its windows. Between reading and committing, a
*unit* (consecutive windows, a few per actor) goes to whichever actor is free
(:class:`ray.util.ActorPool`); each actor holds one
:class:`~clsx.inference.classifier.Classifier`, the object the local engine uses, so the
values are the same.

Units finish in any order; the parts' names put OUT back in input order when it is
published. A driver killed at any moment loses only the units in flight: ``--resume``
classifies the windows no part holds. An actor whose node dies is restarted elsewhere and
its unit retried (``max_restarts``/``max_task_retries``), so a lost node costs one unit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from clsx.artifacts.artifact import open_artifact
from clsx.artifacts.remote import local_model
from clsx.batch.config import AUTO_FORMAT, BatchPredictConfig, RayOptions
from clsx.batch.local_engine import (
    Claim,
    Progress,
    checked_input,
    claim_job,
    open_classifier,
    pin_auto_format,
    pin_cuts,
    pin_fallback_format,
    pinned_margins,
    publish,
    record_pins,
    saved_work_hint,
)
from clsx.batch.parts import open_store
from clsx.batch.parts.store import Part, Store
from clsx.batch.summary import Summary
from clsx.errors import ClsxError
from clsx.inference.classifier import Counts, Prediction
from clsx.inference.hardware import physical_cores
from clsx.inference.runners import backend_for
from clsx.io.parquet import ParquetInput, iter_batches, python_strings
from clsx.log import Log, silent

ACTOR_THREADS = 1  # compute threads per actor unless --threads: replicas scale out, not up
# Units per actor over the job: a driver killed at a random moment re-does on average half
# a unit per actor, ~1/(2 * UNITS_PER_ACTOR) of the rows, at most a window per actor.
UNITS_PER_ACTOR = 40


class Predictor:
    """One model replica (a Ray actor): a unit's windows of texts in, their prediction
    columns and counters out."""

    def __init__(self, config: BatchPredictConfig) -> None:
        if config.model_source is not None and not Path(config.model).is_dir():
            # Another node than the driver's: the model's URI, fetched into its clsx cache.
            config = replace(config, model=local_model(config.model_source,
                                                       config.storage_options))
        artifact = open_artifact(config.model, allow_pickle=config.allow_pickle)
        self.classifier = open_classifier(config, artifact,
                                          threads=config.threads or ACTOR_THREADS)
        self.text_column = config.text_column

    def predict(self, first: int, windows: list[pa.Array]
                ) -> tuple[int, list[pa.Array], Counts]:
        """Classify each window's texts (Arrow arrays: cheap to ship) of the unit that
        starts at window ``first`` as the local engine does (the same batches, so the same
        values): ``first``, the unit's prediction columns and its counters."""
        texts = ((None, python_strings(window, self.text_column)) for window in windows)
        predictions = [p for _, p in self.classifier.stream(texts)]
        joined = Prediction.concat(predictions)
        return first, joined.columns, joined.counts


@dataclass
class Unit:
    """Windows ``first..last`` of IN, read by the driver: their record batches."""

    first: int
    last: int
    batches: list[pa.RecordBatch]

    @property
    def rows(self) -> int:
        return sum(batch.num_rows for batch in self.batches)


def ray_batch_predict(config: BatchPredictConfig, options: RayOptions,
                      progress: Progress | None = None, log: Log = silent) -> Summary:
    """Classify ``config.input`` on Ray into ``config.output`` (a dataset directory unless
    ``--output-format file``); ``progress`` is told the rows committed, ``log`` gets status
    lines. With ``config.resume`` it continues an interrupted Ray job."""
    ray = _import_ray()
    if config.output_format is None:
        config = replace(config, output_format="dataset")
    source = checked_input(config)
    store = open_store(config.output_location())
    with store.locked():  # one writer per OUT, as the local engine: before Ray starts
        claim = claim_job(config, source, store, "ray")
        if claim is None:
            return Summary(0, 0.0, config.backend, config.output, already_complete=True)
        return _ray_batch_predict(ray, config, options, source, store, claim, progress, log)


def _ray_batch_predict(ray, config: BatchPredictConfig, options: RayOptions,
                       source: ParquetInput, store: Store, claim: Claim,
                       progress: Progress | None, log: Log) -> Summary:
    backend_for(claim.artifact, config.backend)  # a bad backend fails here, not in an actor
    threads = config.threads or ACTOR_THREADS
    job = claim.job
    pinned = pin_auto_format(config, source, claim.artifact, threads=threads, log=log,
                             journal=claim.journal)
    job[AUTO_FORMAT] = pinned.name
    first = claim.artifact
    if pinned.config.model != config.model:  # an export in the driver's cache: not the URI's
        config = replace(pinned.config, model_source=None)
        first = open_artifact(config.model, check_parent=False)
    else:
        config = pinned.config
    fallback = pin_fallback_format(config, source, claim.fallback, first, threads, log,
                                   claim.journal)
    config = _pin_cuts(fallback.config, source, claim.journal, log)
    record_pins(job, config, fallback.name)
    store.start(job)
    resumed_rows = sum(part.rows for part in claim.parts)
    counts = Counts()
    started = time.perf_counter()
    if not store.is_done():
        _start_ray(ray, options.address, options.num_workers * threads)
        actors = [ray.remote(Predictor).options(
            num_cpus=threads, num_gpus=options.gpus_per_worker or None,
            max_restarts=-1, max_task_retries=-1,  # a lost node: restart, retry the unit
        ).remote(config) for _ in range(options.num_workers)]
        try:
            units = _pending_units(source, config, claim.parts,
                                   unit_windows(source.num_rows, config,
                                                options.num_workers))
            _run_units(ray, ray.util.ActorPool(actors), units, config.text_column,
                       source.schema.names, store, claim.schema, counts,
                       lambda: progress(resumed_rows + counts.rows, source.num_rows)
                       if progress is not None else None)
        except (ClsxError, KeyboardInterrupt) as exc:
            hinted = saved_work_hint(exc, store, resumed_rows + counts.rows)
            if hinted is None:
                raise
            raise hinted from exc
        finally:  # now, not when the last handle goes: a failed job's traceback holds them
            for actor in actors:
                ray.kill(actor)
        store.mark_done(resumed_rows + counts.rows)
    publish(config, store, claim.schema, source.num_rows)
    backend = ", ".join(filter(None, (f"{config.backend} on ray ({options.num_workers} "
                                      "workers)", pinned.because, fallback.because)))
    return Summary(counts.rows, time.perf_counter() - started, backend, config.output, counts,
                   resumed_rows, **pinned_margins(config))


def _run_units(ray, pool, units: Iterator[Unit], text_column: str, kept: list[str],
               store: Store, schema: pa.Schema, counts: Counts, progressed) -> None:
    """Hand each unit's texts to a free actor and commit each result, with the unit's
    ``kept`` columns, as a part; ``counts`` adds up what the committed units took."""
    in_flight: dict[int, Unit] = {}

    def finished() -> tuple[int, list[pa.Array], Counts]:
        try:
            return pool.get_next_unordered()
        except ray.exceptions.RayError as exc:
            raise _clsx_error(exc) from None

    def commit(result: tuple[int, list[pa.Array], Counts]) -> None:
        first, columns, unit_counts = result
        _commit(store, in_flight.pop(first), kept, columns, schema)
        counts.add(unit_counts)
        progressed()

    for unit in units:  # the next unit is read while every actor computes
        result = None if pool.has_free() else finished()
        in_flight[unit.first] = unit
        windows = [batch.column(text_column) for batch in unit.batches]
        pool.submit(lambda actor, args: actor.predict.remote(*args), (unit.first, windows))
        if result is not None:  # written while the freed actor already computes again
            commit(result)
    while pool.has_next():
        commit(finished())


def _commit(store: Store, unit: Unit, kept: list[str], columns: list[pa.Array],
            schema: pa.Schema) -> Part:
    """Write ``unit``'s kept input columns and its predictions as the part of its windows."""
    if len(columns[0]) != unit.rows:
        raise ClsxError(f"an actor returned {len(columns[0])} predictions for windows "
                        f"{unit.first}..{unit.last} of {unit.rows} rows")
    writer = store.writer(unit.first, schema)
    offset = 0
    try:
        for batch in unit.batches:
            arrays = ([batch.column(name) for name in kept]
                      + [column.slice(offset, batch.num_rows) for column in columns])
            writer.write(pa.RecordBatch.from_arrays(arrays, schema=schema))
            offset += batch.num_rows
    except BaseException:
        writer.discard()
        raise
    return writer.commit(unit.last)


def unit_windows(rows: int, config: BatchPredictConfig, actors: int) -> int:
    """Windows per unit of a job over ``rows`` rows: about :data:`UNITS_PER_ACTOR` units
    per actor, at least one window, at most ``--part-rows`` rows. A driver killed at any
    moment loses at most ``actors`` units (one in flight per actor)."""
    wanted_rows = min(config.part_rows, rows // (UNITS_PER_ACTOR * actors))
    return max(1, wanted_rows // config.window_rows)


def _pending_units(source: ParquetInput, config: BatchPredictConfig, committed: list[Part],
                   unit_windows: int) -> Iterator[Unit]:
    """IN's windows that no committed part holds, read in order and grouped into units of
    up to ``unit_windows`` consecutive windows (a unit never spans a committed part)."""
    done = {index for part in committed for index in range(part.first, part.last + 1)}
    unit: Unit | None = None
    for index, batch in enumerate(iter_batches(source, config.window_rows)):
        if index in done:
            if unit is not None:
                yield unit
                unit = None
            continue
        if unit is None:
            unit = Unit(index, index, [])
        unit.last = index
        unit.batches.append(batch)
        if len(unit.batches) == unit_windows:
            yield unit
            unit = None
    if unit is not None:
        yield unit


def _pin_cuts(config: BatchPredictConfig, source: ParquetInput,
              journal: dict[str, Any] | None, log: Log) -> BatchPredictConfig:
    """``config`` with the re-check's and the cascade's cuts every actor runs with: those
    of the job ``journal`` continues, else chosen here once (the driver opens the model for
    them unless neither can apply)."""
    if config.recheck is False and config.fallback_model is None:
        return config
    artifact = open_artifact(config.model, allow_pickle=config.allow_pickle)
    with open_classifier(config, artifact, threads=config.threads or ACTOR_THREADS) as model:
        return pin_cuts(config, source, model, journal, log)


def _start_ray(ray, address: str | None, actor_cpus: int) -> None:
    """Connect to ``address``, or start a local instance with a CPU slot per core (at least
    one per actor thread)."""
    local = {} if address else {"num_cpus": max(physical_cores(), actor_cpus)}
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False, **local)


def _clsx_error(exc: Exception) -> ClsxError:
    """An actor's failure as one line: its own message where it raised a
    :class:`~clsx.errors.ClsxError` (bad text in IN, a model it cannot load), else the
    last line of the error Ray reports (the exception of its traceback)."""
    cause: object = exc
    while isinstance(getattr(cause, "cause", None), Exception):  # a task's own exception
        cause = cause.cause
    if isinstance(cause, ClsxError):
        return ClsxError(str(cause))
    # An actor that failed to start reports its constructor's traceback as text only.
    lines = [line for line in str(cause).splitlines() if line.strip()] or [repr(cause)]
    prefix = f"{ClsxError.__module__}.{ClsxError.__name__}: "
    if lines[-1].startswith(prefix):
        return ClsxError(lines[-1].removeprefix(prefix))
    return ClsxError(f"a Ray actor failed: {lines[-1].strip()}")


def _import_ray():
    try:
        import ray
        import ray.util  # noqa: F401
    except ImportError as exc:
        raise ClsxError("--engine ray needs Ray: pip install 'clsx[ray]' (or 'ray')") from exc
    return ray
