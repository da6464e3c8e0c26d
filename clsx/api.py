"""The Python API: ``clsx.load(...)`` for texts and tables in memory, ``clsx.batch_predict``
for Parquet to Parquet, each the same pipeline the CLI runs.

Both take the options of ``clsx batch-predict`` by their :class:`BatchPredictConfig` field
names (``threshold=0.7``, ``max_length=256``, ``long_text="window"``): the config validates
and defaults them, and an unknown name is a :class:`~clsx.errors.ClsxError` that lists the
known ones. ``import clsx`` reaches this module only on first use of ``clsx.load`` or
``clsx.batch_predict``, and torch loads only when a model opens.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from clsx.artifacts.artifact import open_artifact
from clsx.auto.recheck import SAMPLE_TEXTS, attach, rechecks, resolve_cut
from clsx.batch.config import BatchPredictConfig, RayOptions
from clsx.batch.local_engine import Progress, open_classifier
from clsx.batch.run import run_batch_predict
from clsx.batch.summary import Summary
from clsx.errors import ClsxError
from clsx.inference.classifier import Classifier, Prediction, output_fields
from clsx.inference.decisions import MULTI
from clsx.io.parquet import is_text_type, python_strings
from clsx.log import Log, silent

# The BatchPredictConfig fields that shape a classifier; the others name a job's files.
LOAD_OPTIONS = ("batch_tokens", "window_rows", "max_length", "long_text", "window_stride",
                "aggregate", "windows_column", "threshold", "threads", "dtype", "max_num_seqs",
                "max_num_batched_tokens", "memory_fraction", "allow_pickle", "recheck")
# The only in-memory table types: classify returns the type it was given.
TableT = TypeVar("TableT")


class Model:
    """A model directory opened for classifying texts in memory (see :func:`load`).

    Close it (or use it in a ``with``) to release what its backend holds beyond memory:
    the vLLM backend's engine process.
    """

    def __init__(self, classifier: Classifier, window_rows: int, recheck: bool | None = None
                 ) -> None:
        self._classifier = classifier
        self._window_rows = window_rows
        self._closed = False
        # A lower-precision run re-checks (clsx.auto.recheck), its reference checked now;
        # its cut is known or measured on the first texts classified, as batch-predict's
        # on IN's first texts.
        self._recheck = attach(classifier) if rechecks(classifier, recheck) else None
        self._cut_pending = self._recheck is not None

    @property
    def labels(self) -> tuple[str, ...]:
        """The label names in label-id order (the columns of :meth:`predict_proba`)."""
        return self._classifier.manifest.labels

    @property
    def problem_type(self) -> str:
        """``single_label_classification``, ``multi_label_classification`` or ``regression``."""
        return self._classifier.manifest.problem_type

    @property
    def backend(self) -> str:
        """The backend as batch-predict's summary names it, e.g. ``torch (fp32, cpu)``."""
        return self._classifier.description

    def predict(self, texts: Iterable[str | None]) -> list[Any]:
        """The decisions for ``texts``, one per text: the label (single-label), the list of
        labels at or above their thresholds (multi-label), the value (regression); None for
        a None text."""
        rule = self._classifier.rule
        if rule.has_labels:
            decisions = "labels" if rule.problem_type == MULTI else "label"
        else:
            decisions = "score"  # regression: the value
        return self._named_columns(self._predict(_text_list(texts)))[decisions].to_pylist()

    def predict_proba(self, texts: Iterable[str | None]) -> np.ndarray:
        """float32 array (texts, labels) of batch-predict's ``probs``: softmax (single-label)
        or per-label sigmoid (multi-label) of the logits divided by the model's calibration
        temperatures; for regression (texts, 1), the predicted values. A None text's row is
        NaN."""
        prediction = self._predict(_text_list(texts))
        return self._classifier.rule.probabilities(prediction.logits)

    def classify(self, table: TableT, text_column: str = "text", output_prefix: str = ""
                 ) -> TableT:
        """``table`` (a pyarrow Table or a pandas DataFrame, returned as the same type, the
        input left as it was) with batch-predict's output columns added after its own:
        ``label``, ``labels`` (multi-label), ``score``, ``probs`` and, with
        ``windows_column=True``, ``windows``, each named with ``output_prefix`` in front.

        In a DataFrame they are what pandas reads from batch-predict's OUT. A column the
        table already has is refused: pass ``output_prefix="pred_"`` to keep both.
        """
        dataframe = _dataframe_type(table)
        names = list(table.columns) if dataframe else table.column_names
        if text_column not in names:
            raise ClsxError(f"the table has no column {text_column!r}; its columns are "
                            f"{', '.join(map(str, names)) or '(none)'} (choose one with "
                            "text_column=...)")
        try:
            column = pa.array(table[text_column]) if dataframe else table.column(text_column)
        except pa.ArrowException as exc:  # a DataFrame column of mixed values
            raise ClsxError(f"column {text_column!r} is not text: {exc}") from None
        if not is_text_type(column.type):
            raise ClsxError(f"column {text_column!r} holds {column.type}, not text; cast it to "
                            "string or pick another text_column")
        fields = output_fields(self._classifier.manifest, self._classifier.windows_column,
                               output_prefix)
        clashes = [field.name for field in fields if field.name in names]
        if clashes:
            raise ClsxError(f"the table already has column {', '.join(map(repr, clashes))}; "
                            "pass output_prefix='pred_' to keep both")
        prediction = self._predict(python_strings(column, text_column))
        if dataframe:
            added = {field.name: array.to_pandas().set_axis(table.index)
                     for field, array in zip(fields, prediction.columns, strict=True)}
            return table.assign(**added)
        for field, array in zip(fields, prediction.columns, strict=True):
            table = table.append_column(field, array)
        return table

    def close(self) -> None:
        """Release the backend (vLLM's engine process); the model cannot classify after."""
        if not self._closed:
            self._closed = True
            self._classifier.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"<clsx.Model {self._classifier.artifact.path} on {self.backend}{state}>"

    def _predict(self, texts: list[str | None]) -> Prediction:
        if self._closed:
            raise ClsxError("this model is closed; open it again with clsx.load")
        sample = [text for text in texts if text is not None][:SAMPLE_TEXTS]
        if self._cut_pending and sample:
            self._recheck.margin = resolve_cut(self._classifier, lambda: sample,
                                               self._classifier.runner.options.threads).margin
            self._cut_pending = False
        return self._classifier.predict_all(texts, self._window_rows)

    def _named_columns(self, prediction: Prediction) -> dict[str, pa.Array]:
        fields = output_fields(self._classifier.manifest, self._classifier.windows_column)
        return {field.name: array for field, array in zip(fields, prediction.columns,
                                                          strict=True)}


def load(model_dir: str | Path, backend: str = "auto", device: str = "cpu",
         **options: Any) -> Model:
    """Open ``model_dir`` (a directory, or its URI on object storage, fetched once into the
    clsx cache) for classifying in memory, as batch-predict would open it.

    ``backend`` ``auto`` runs the directory's own format and, for a PyTorch checkpoint
    without a ``dtype``, the fastest dtype that keeps its labels on this machine: batch-
    predict's choice for a job under 20,000 rows. The format search of bigger jobs
    (``--auto-formats``: exports and timings on the job's own texts) is not made here;
    for it, run :func:`batch_predict` or load an export. A run below fp32 re-checks its
    unsure rows in fp32 as batch-predict does (``recheck=False`` turns it off), its cut
    measured on the first texts classified unless known. ``options`` are
    :data:`LOAD_OPTIONS`, with batch-predict's meanings and defaults.
    """
    _check_names("load", options, LOAD_OPTIONS)
    # batch-predict's own config, so that options are checked, defaulted and resolved as
    # there; a job's input and output do not apply.
    config = BatchPredictConfig(input="", output="", model=str(model_dir), backend=backend,
                                device=device, **_given(options)).with_local_model()
    artifact = open_artifact(config.model, allow_pickle=config.allow_pickle)
    return Model(open_classifier(config, artifact), config.window_rows, config.recheck)


def batch_predict(input: str | Path, output: str | Path, model: str | Path, *,
                  engine: str = "local", progress: Progress | None = None, log: Log = silent,
                  **options: Any) -> Summary:
    """``clsx batch-predict INPUT OUTPUT --model MODEL``: classify Parquet into Parquet.

    ``options`` are the command's, by their :class:`BatchPredictConfig` and (with
    ``engine="ray"``) :class:`RayOptions` field names; ``storage_options`` may be a mapping.
    ``progress(rows done, rows in total)`` is called after each window (Ray: each unit
    committed); ``log`` gets the status lines the CLI prints (``log=print``).
    Returns the run's :class:`Summary` (``summary.line()`` is the CLI's last line).
    """
    job_fields = _field_names(BatchPredictConfig)
    ray_fields = _field_names(RayOptions)
    _check_names("batch_predict", options,
                 [name for name in job_fields
                  if name not in ("input", "output", "model", "recheck_margin",
                                  "fallback_margin", "model_source", "fallback_config")]
                 + ray_fields)
    given = _given(options)
    for name in ("keep_columns", "storage_options"):
        if name in given:
            given[name] = _strings(given[name])
    config = BatchPredictConfig(input=str(input), output=output, model=str(model),
                                **{name: given[name] for name in job_fields if name in given})
    ray_options = {name: given[name] for name in ray_fields if name in given}
    ray = RayOptions(**ray_options) if ray_options else None
    return run_batch_predict(config, engine, ray, progress, log=log)


def _given(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options given a value: None leaves a field at its default, as an absent flag."""
    return {name: value for name, value in options.items() if value is not None}


def _check_names(function: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = [name for name in options if name not in known]
    if unknown:
        raise ClsxError(f"{function}() got unknown option {', '.join(map(repr, unknown))}; "
                        f"known options: {', '.join(known)}")


def _field_names(config: type) -> list[str]:
    return [field.name for field in dataclasses.fields(config)]


def _strings(value: str | Iterable[str] | Mapping[str, Any]) -> tuple[str, ...]:
    """Column names or ``key=value`` settings as the config's tuple; a mapping becomes
    ``key=value`` items, and a lone string one item."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Mapping):
        return tuple(f"{key}={item}" for key, item in value.items())
    return tuple(value)


def _text_list(texts: Iterable[str | None]) -> list[str | None]:
    """``texts`` (a list, a pandas Series, ...) as Python strings; a missing text (None,
    NaN, pandas.NA) becomes None. A lone string, which would be classified letter by
    letter, and items that are not text are refused."""
    if isinstance(texts, str):
        raise ClsxError("pass a list of texts, not one string: predict([text])")
    try:
        column = pa.array(texts, type=pa.string(), from_pandas=True)
    except (pa.ArrowException, TypeError) as exc:
        raise ClsxError(f"texts must be strings (None for a missing one): {exc}") from None
    return python_strings(column, "texts")


def _dataframe_type(table: object) -> bool:
    """True for a pandas DataFrame, False for a pyarrow Table; refuses anything else.

    pandas is never imported here: an object can only be a DataFrame if pandas already is.
    """
    if isinstance(table, pa.Table):
        return False
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(table, pandas.DataFrame):
        return True
    raise ClsxError(f"classify takes a pyarrow Table or a pandas DataFrame, not a "
                    f"{type(table).__module__}.{type(table).__name__}")


__all__ = ["LOAD_OPTIONS", "Model", "batch_predict", "load"]
