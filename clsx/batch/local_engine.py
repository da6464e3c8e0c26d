"""``clsx batch-predict``: classify a Parquet file (or many) into a new Parquet file."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from clsx.artifacts.artifact import Artifact, open_artifact
from clsx.auto.resolve import classifier_for
from clsx.batch.config import (
    AUTO_FORMAT,
    FALLBACK,
    FALLBACK_MARGIN,
    RECHECK_MARGIN,
    BatchPredictConfig,
)
from clsx.batch.parts import open_store
from clsx.batch.parts.store import Part, PartWriter, Store
from clsx.batch.summary import Summary
from clsx.errors import ClsxError
from clsx.inference.classifier import Classifier, Counts, Fallback, output_fields
from clsx.io.parquet import (
    ParquetInput,
    check_output_location,
    iter_batches,
    open_input,
    text_values,
)
from clsx.io.storage import Location, one_line
from clsx.log import Log, silent

# progress(rows done, rows in total), called after each window; the CLI draws the bar.
Progress = Callable[[int, int], None]
PART_SECONDS = 120.0  # a part is committed at least this often, whatever --part-rows says


@dataclass(frozen=True)
class Pinned:
    """A job's config with ``--backend auto``'s format choice pinned in it: the candidate's
    name (None: no format search applies) and why it was chosen."""

    config: BatchPredictConfig
    name: str | None = None
    because: str | None = None


def pin_auto_format(config: BatchPredictConfig, source: ParquetInput, artifact: Artifact,
                    threads: int | None = None, log: Log = silent,
                    journal: dict[str, Any] | None = None,
                    unsure: Callable[[], list[str]] | None = None) -> Pinned:
    """``config`` with ``--backend auto``'s format choice (:mod:`clsx.auto.formats`) pinned
    as its model directory, backend and dtype, and why it was chosen; ``config`` as it is
    where no format search applies. ``threads`` is what each model replica runs with
    (``config.threads`` when None). ``journal`` (the job a resume continues) decides
    instead of a search: the format it records, or none where it ran without one.
    ``unsure`` (a cascade's fallback model) gives the texts the search times instead of
    IN's first ones."""
    from clsx.auto.formats import CALIBRATION_TEXTS, FORMAT_SEARCH_MIN_ROWS, choose_format, rates

    wanted = config.auto_formats
    if wanted is None:
        wanted = source.num_rows >= FORMAT_SEARCH_MIN_ROWS
    if not wanted:
        return Pinned(config)
    obstacle = _format_search_obstacle(config, artifact)
    if obstacle is not None:
        if config.auto_formats:
            raise ClsxError(f"--auto-formats {obstacle}")
        return Pinned(config)
    recorded = journal.get(AUTO_FORMAT) if journal is not None else None
    if journal is not None and AUTO_FORMAT in journal and recorded is None:
        return Pinned(config)  # the interrupted job ran without a search
    texts = first_texts(source, config, CALIBRATION_TEXTS)
    if not texts:  # only null texts: nothing to measure, nothing for a model to do
        return Pinned(config)
    options = replace(config.runner_options(), threads=threads or config.threads)
    choice = choose_format(
        artifact, options, texts,
        log=lambda line: log(f"--backend auto: {line}"), recorded=recorded,
        max_length=config.max_length, long_text=config.long_text_override(),
        batch_tokens=config.batch_tokens, threshold=config.threshold,
        recheck=config.recheck is not False, unsure=unsure)
    remembered = ", remembered" if choice.cached else ""
    measured = f" ({rates(choice.measured)})" if choice.measured else ""
    log(f"--backend auto chose {choice.name}{remembered}: {choice.reason}{measured}")
    pinned = replace(config, model=choice.directory, backend=choice.backend, dtype=choice.dtype)
    return Pinned(pinned, choice.name,
                  f"{choice.name} chosen by --backend auto{remembered}: {choice.reason}")


def _format_search_obstacle(config: BatchPredictConfig, artifact: Artifact) -> str | None:
    """Why the format search cannot run for this job (None: it can)."""
    if config.backend != "auto" or config.dtype is not None:
        return "applies to --backend auto without --dtype"
    if artifact.manifest.format != "torch":
        return (f"applies to a PyTorch model directory; {config.model} is already an "
                f"export ({artifact.manifest.format})")
    from clsx.inference.runners.torch import resolve_device

    if resolve_device(config.device) != "cpu":
        return "compares CPU formats (onnx, onnx-int8); on a GPU, pass --device cpu or drop it"
    return None


def first_texts(source: ParquetInput, config: BatchPredictConfig, count: int) -> list[str]:
    """The first ``count`` non-null texts of the input."""
    texts: list[str] = []
    for batch in iter_batches(source, config.window_rows):
        texts += [t for t in text_values(batch, config.text_column) if t is not None]
        if len(texts) >= count:
            break
    return texts[:count]


def open_classifier(config: BatchPredictConfig, artifact: Artifact,
                    threads: int | None = None) -> Classifier:
    """The classifier ``config`` asks for (``threads`` overrides ``config.threads``)."""
    options = config.runner_options()
    if threads is not None:
        options = replace(options, threads=threads)
    classifier = classifier_for(
        artifact, config.backend, options, batch_tokens=config.batch_tokens,
        max_length=config.max_length, long_text=config.long_text_override(),
        threshold=config.threshold, windows_column=config.windows_column)
    if config.recheck_margin is not None:  # pinned by a driver (Ray)
        from clsx.auto.recheck import attach, rechecks

        if rechecks(classifier, config.recheck):
            attach(classifier, config.recheck_margin)
    if config.fallback_model is not None:
        alone = config.fallback_config or config.fallback_alone()
        second = open_artifact(alone.model, allow_pickle=config.allow_pickle,
                               check_parent=alone.model == config.fallback_model)
        classifier.fallback = Fallback(config.fallback_margin or 0.0,
                                       open_classifier(alone, second, threads))
    return classifier


def pin_fallback_format(config: BatchPredictConfig, source: ParquetInput,
                        artifact: Artifact | None, first: Artifact, threads: int | None = None,
                        log: Log = silent, journal: dict[str, Any] | None = None) -> Pinned:
    """``config`` with its fallback model's own config (``fallback_config``) pinned as
    ``--backend auto`` would run the fallback model (``artifact``, as the job's claim
    opened it) alone on IN, but with its format search timed on the rows it will get: the
    texts the first model (``first``, as ``config`` runs it) is least sure of
    (:func:`unsure_texts`); the choice the job ``journal`` continues records, if any.
    ``config`` as it is without a --fallback-model. The pinned name is the fallback
    model's format."""
    if artifact is None:
        return Pinned(config)
    alone = config.fallback_alone()
    if alone.auto_formats and _format_search_obstacle(alone, artifact) is not None:
        alone = replace(alone, auto_formats=None)  # --auto-formats meant the first model
    pinned = pin_auto_format(alone, source, artifact, threads, _fallback_log(log),
                             _fallback_journal(journal),
                             unsure=lambda: unsure_texts(config, source, first, threads))
    because = None if pinned.name is None else f"fallback model {pinned.because}"
    return Pinned(replace(config, fallback_config=pinned.config), pinned.name, because)


def unsure_texts(config: BatchPredictConfig, source: ParquetInput, first: Artifact,
                 threads: int | None = None) -> list[str]:
    """The texts of a cascade's sample (IN's first, as many as
    :func:`~clsx.auto.recheck.cascade_sample_size` says) that its first model (``first``,
    as ``config`` runs it, without a re-check) is least sure of: a quarter of them, at most
    as many as the format search times."""
    from clsx.auto.formats import PROBE_TEXTS
    from clsx.auto.recheck import cascade_sample_size
    from clsx.inference.recheck import margins

    size = cascade_sample_size(config.fallback_agreement, source.num_rows)
    sample = first_texts(source, config, size)
    with open_classifier(replace(config, fallback_model=None), first, threads) as classifier:
        margin = margins(classifier.rule, classifier.predict_all(sample).logits)
    least_sure = np.argsort(margin, kind="stable")[:min(PROBE_TEXTS, max(len(sample) // 4, 1))]
    return [sample[i] for i in least_sure]


def pin_cuts(config: BatchPredictConfig, source: ParquetInput, classifier: Classifier,
             journal: dict[str, Any] | None = None, log: Log = silent) -> BatchPredictConfig:
    """``config`` with the re-check's cut, the cascade's cut and the fallback model's own
    re-check cut pinned, each set on ``classifier`` (:func:`pin_recheck`,
    :func:`pin_fallback`): what every replica of the job runs with."""
    config = replace(config, recheck_margin=pin_recheck(config, source, classifier, journal,
                                                        log))
    return pin_fallback(config, source, classifier, journal, log)


def record_pins(job: dict[str, Any], pinned: BatchPredictConfig,
                fallback_format: str | None) -> None:
    """Write the cuts of ``pinned`` (:func:`pin_cuts`) into the job record, and what was
    pinned for the fallback model alone (:data:`FALLBACK`: its format ``fallback_format``,
    None where no search ran, and its re-check cut; None without a fallback)."""
    alone = pinned.fallback_config
    job[RECHECK_MARGIN], job[FALLBACK_MARGIN] = pinned.recheck_margin, pinned.fallback_margin
    job[FALLBACK] = (None if alone is None else
                     {AUTO_FORMAT: fallback_format, RECHECK_MARGIN: alone.recheck_margin})


def pinned_margins(pinned: BatchPredictConfig) -> dict[str, float | None]:
    """The cuts of ``pinned`` (:func:`pin_cuts`) as :class:`Summary` reports them."""
    alone = pinned.fallback_config
    return {"recheck_margin": pinned.recheck_margin, "fallback_margin": pinned.fallback_margin,
            "fallback_recheck_margin": None if alone is None else alone.recheck_margin}


def pin_fallback(config: BatchPredictConfig, source: ParquetInput, classifier: Classifier,
                 journal: dict[str, Any] | None = None, log: Log = silent
                 ) -> BatchPredictConfig:
    """``config`` with the cascade's cut and its fallback model's own re-check cut pinned,
    both set on ``classifier``'s fallback (``config`` as it is without a
    --fallback-model): those of the job ``journal`` continues, else chosen on IN's first
    texts (as many as :func:`~clsx.auto.recheck.cascade_sample_size` says; the fallback's
    re-check first, so that the cut compares with the labels the fallback model gives
    alone)."""
    from clsx.auto.recheck import cascade_sample_size, fallback_cut

    if classifier.fallback is None:
        return config
    alone = config.fallback_config or config.fallback_alone()
    recheck_margin = pin_recheck(alone, source, classifier.fallback.classifier,
                                 _fallback_journal(journal), _fallback_log(log))
    if journal is not None and journal.get(FALLBACK_MARGIN) is not None:
        margin = journal[FALLBACK_MARGIN]
    else:
        target = config.fallback_agreement
        sample = first_texts(source, config, cascade_sample_size(target, source.num_rows))
        cut = fallback_cut(classifier, sample, target)
        if cut is None:  # only null texts: nothing for either model to do
            return config
        log(f"--fallback-model: {cut.describe()}")
        margin = cut.margin
    classifier.fallback.margin = margin
    return replace(config, fallback_margin=margin,
                   fallback_config=replace(alone, recheck_margin=recheck_margin))


def _fallback_journal(journal: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fallback model's part of a resumed job's journal (None: a new job)."""
    return None if journal is None else journal.get(FALLBACK) or {}


def _fallback_log(log: Log) -> Log:
    return lambda line: log(f"--fallback-model: {line}")


def pin_recheck(config: BatchPredictConfig, source: ParquetInput, classifier: Classifier,
                journal: dict[str, Any] | None = None, log: Log = silent) -> float | None:
    """Attach the re-check ``config`` asks for to ``classifier`` and return its cut (None:
    the run does not re-check): the cut of the job ``journal`` continues, else the export's,
    this machine's remembered one, or one measured on IN's first texts."""
    from clsx.auto.recheck import SAMPLE_TEXTS, attach, rechecks, resolve_cut

    if not rechecks(classifier, config.recheck):
        if config.recheck:
            log(f"--recheck: nothing to re-check ({classifier.description}, "
                f"{classifier.manifest.problem_type})")
        return None
    if journal is not None and RECHECK_MARGIN in journal:
        margin = journal[RECHECK_MARGIN]
        if margin is not None:
            attach(classifier, margin)
        return margin
    recheck = attach(classifier)
    cut = resolve_cut(classifier, lambda: first_texts(source, config, SAMPLE_TEXTS),
                      classifier.runner.options.threads,
                      log=lambda line: log(f"--recheck: {line}"))
    if cut is None:  # only null texts: nothing to measure, nothing to re-check
        classifier.recheck = None
        return None
    recheck.margin = cut.margin
    log(f"--recheck: {cut.describe(config.max_label_changes)}")
    return cut.margin


def check_fallback_model(config: BatchPredictConfig, artifact: Artifact) -> Artifact | None:
    """The --fallback-model, opened (None: none given); refused where its labels or
    problem type differ from the model's."""
    if config.fallback_model is None:
        return None
    from clsx.auto.recheck import check_fallback

    try:
        fallback = open_artifact(config.fallback_model, allow_pickle=config.allow_pickle)
    except ClsxError as exc:
        raise ClsxError(f"--fallback-model: {exc}") from None
    check_fallback(artifact, fallback)
    return fallback


def checked_input(config: BatchPredictConfig) -> ParquetInput:
    """The validated input; refuses an empty input and an OUT that a later run over the same
    input would read."""
    source = open_input(config.input, config.text_column, config.keep_columns,
                        config.storage_options)
    if source.num_rows == 0:
        raise ClsxError(f"input {config.input} has 0 rows; there is nothing to classify")
    check_output_location(config.output_location(), source)
    return source


def output_schema(config: BatchPredictConfig, source: ParquetInput, artifact: Artifact
                  ) -> pa.Schema:
    """The kept input columns followed by the (prefixed) prediction columns of
    ``artifact``'s classifier; a prediction column the input already has is refused."""
    fields = output_fields(artifact.manifest, config.windows_column, config.output_prefix)
    clashes = [f.name for f in fields if f.name in source.schema.names]
    if clashes:
        raise ClsxError(
            f"the input already has column {', '.join(map(repr, clashes))}; pass "
            "--output-prefix pred_ (or --keep-columns without it) to keep both"
        )
    return pa.schema(list(source.schema) + fields)


def batch_predict(config: BatchPredictConfig, progress: Progress | None = None,
                  log: Log = silent) -> Summary:
    """Classify ``config.input`` into ``config.output``; the output appears only when complete.

    Work is committed in part files beside OUT (see :mod:`clsx.batch.parts.store`), so a killed run
    continues with ``resume`` where it stopped. ``progress`` is told the rows done so far;
    ``log`` gets status lines (``--backend auto``'s format search).
    """
    try:
        return _batch_predict(config, progress, log)
    except OSError as exc:  # an object store that cannot be reached, or refuses, mid-job
        raise ClsxError(f"{one_line(exc)} (committed parts stay: rerun the same command with "
                        "--resume once the storage answers)") from exc


@dataclass(frozen=True)
class Claim:
    """A job that holds OUT: its model, output schema, job record, the journal and
    committed parts of the interrupted run it continues (None and none: a new job), and
    its --fallback-model (None: none)."""

    artifact: Artifact
    schema: pa.Schema
    job: dict[str, Any]
    journal: dict[str, Any] | None
    parts: list[Part]
    fallback: Artifact | None


def claim_job(config: BatchPredictConfig, source: ParquetInput, store: Store, engine: str
              ) -> Claim | None:
    """Check the job against OUT and its store, under the store's lock, before the format
    search and the model load (minutes): an existing OUT, a resume with other settings, a
    bad fallback model or a damaged store fail here. None: OUT is already complete."""
    if not _claim_output(config, config.output_location(), store):
        return None
    artifact = open_artifact(config.model, allow_pickle=config.allow_pickle)
    schema = output_schema(config, source, artifact)
    fallback = check_fallback_model(config, artifact)
    job = config.job(source, artifact.fingerprint, engine)
    journal = store.check_job(job, AUTO_FORMAT, RECHECK_MARGIN, FALLBACK_MARGIN, FALLBACK)
    # Ray commits parts out of order: its resume fills the gaps; the local engine's cannot.
    parts = store.parts(contiguous=engine == "local") if journal is not None else []
    return Claim(artifact, schema, job, journal, parts, fallback)


def _batch_predict(config: BatchPredictConfig, progress: Progress | None, log: Log
                   ) -> Summary:
    source = checked_input(config)
    store = open_store(config.output_location())
    with store.locked():  # one writer per OUT, from the job check to the clean-up
        claim = claim_job(config, source, store, "local")
        if claim is None:
            return Summary(0, 0.0, config.backend, config.output, already_complete=True)
        artifact, job, journal, parts = claim.artifact, claim.job, claim.journal, claim.parts
        resumed_rows = sum(part.rows for part in parts)
        pinned = pin_auto_format(config, source, artifact, log=log, journal=journal)
        job[AUTO_FORMAT] = pinned.name
        if pinned.config.model != config.model:  # a cached export, current (checked there)
            artifact = open_artifact(pinned.config.model, check_parent=False)
        fallback = pin_fallback_format(pinned.config, source, claim.fallback, artifact,
                                       log=log, journal=journal)
        classifier = open_classifier(fallback.config, artifact)
        counts = Counts()
        try:
            # After the model loaded (one that fails to load leaves nothing), inside the
            # try: a refusal here must still close the classifier (vLLM's engine process).
            cuts = pin_cuts(fallback.config, source, classifier, journal, log)
            record_pins(job, cuts, fallback.name)
            store.start(job)
            started = time.perf_counter()  # after the cuts' samples, as on Ray
            if not store.is_done():
                next_window = parts[-1].last + 1 if parts else 0
                _predict_into_parts(config, source, classifier, store, claim.schema,
                                    next_window, resumed_rows, counts, progress)
                store.mark_done(resumed_rows + counts.rows)
        finally:
            classifier.close()
        publish(config, store, claim.schema, source.num_rows)
        backend = ", ".join(filter(None, (classifier.description, pinned.because,
                                          fallback.because)))
        return Summary(counts.rows, time.perf_counter() - started, backend, config.output,
                       counts, resumed_rows, **pinned_margins(cuts))


def publish(config: BatchPredictConfig, store: Store, schema: pa.Schema, rows_read: int
            ) -> None:
    """Make OUT from the store's parts, a dataset directory or one file, then remove the
    store; parts that hold other than the ``rows_read`` rows of IN are an error, and OUT
    is then not written."""
    written = sum(part.rows for part in store.parts())
    if written != rows_read:
        raise ClsxError(f"the job's parts hold {written} rows but {rows_read} were read from "
                        f"{config.input}; {config.output} was not written")
    if config.output_format == "dataset":
        store.publish_dataset()
    else:
        store.assemble(schema)


def _claim_output(config: BatchPredictConfig, output: Location, store: Store) -> bool:
    """Decide what to do with an existing OUT or parts; False when OUT is already complete."""
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


def _predict_into_parts(config: BatchPredictConfig, source: ParquetInput, classifier: Classifier,
                        store: Store, schema: pa.Schema, next_window: int,
                        resumed_rows: int, counts: Counts, progress: Progress | None) -> None:
    """Classify windows ``next_window..`` and commit them as parts; counts what it did."""
    kept = source.schema.names
    pending = ((index, batch) for index, batch in enumerate(iter_batches(source,
               config.window_rows)) if index >= next_window)
    items = (((index, batch), text_values(batch, config.text_column))
             for index, batch in pending)
    writer: PartWriter | None = None
    part_started = time.monotonic()
    if progress is not None:
        progress(resumed_rows, source.num_rows)
    try:
        for (index, batch), prediction in classifier.stream(items):
            if writer is None:
                writer, part_started = store.writer(index, schema), time.monotonic()
            arrays = [batch.column(name) for name in kept] + prediction.columns
            writer.write(pa.RecordBatch.from_arrays(arrays, schema=schema))
            counts.add(prediction.counts)
            if progress is not None:
                progress(resumed_rows + counts.rows, source.num_rows)
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
        if not isinstance(exc, (ClsxError, KeyboardInterrupt)):
            raise
        saved = resumed_rows + counts.rows - (writer.rows if writer is not None else 0)
        hinted = saved_work_hint(exc, store, saved)
        if hinted is None:
            raise
        raise hinted from exc


def saved_work_hint(exc: ClsxError | KeyboardInterrupt, store: Store, saved: int
                    ) -> BaseException | None:
    """A job stopped by ``exc`` with ``saved`` rows committed: the error to raise instead,
    which says how to continue (None: nothing was saved, and the store is removed)."""
    if saved == 0:
        store.remove()
        return None
    hint = (f"{saved} classified rows are saved in {store.directory}; rerun the same "
            "command with --resume to continue")
    if isinstance(exc, KeyboardInterrupt):
        return KeyboardInterrupt(f"Interrupted; {hint}.")
    return ClsxError(f"{exc}; {hint}")
