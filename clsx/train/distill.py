"""``clsx distill``: a teacher's soft labels on unlabelled texts train a smaller student.

The teacher (any clsx model directory or export, any backend) labels the texts of ``--data``
(and of ``--train``, where gold labels exist too, and the ``--augment`` copies of the
``--data`` texts, :mod:`clsx.train.augment`) through
:func:`clsx.batch.local_engine.batch_predict`, keeping its probability vectors. Its outputs are
committed in parts in a hidden work directory beside the output (``.NAME.clsx-distill``), so a
killed run continues the labelling with ``--resume``, and the student's training continues from
its checkpoint. The student is then trained by :func:`clsx.train.trainer.fit` with
:func:`soft_label_loss`; it learns the teacher's labels (in the teacher's order) and problem
type.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clsx.artifacts.artifact import Artifact, open_artifact
from clsx.artifacts.bundled import resolve_model
from clsx.artifacts.manifest import Manifest
from clsx.batch.config import BatchPredictConfig
from clsx.batch.local_engine import batch_predict
from clsx.errors import ClsxError
from clsx.evaluation.config import EvalConfig
from clsx.evaluation.evaluate import EvalResult, evaluate, score
from clsx.inference.decisions import MULTI, SINGLE, DecisionRule
from clsx.io import durable
from clsx.io.outputs import check_output_directory
from clsx.io.parquet import python_strings
from clsx.io.staging import staged_directory
from clsx.io.tables import LabelledData, read_labelled, read_texts
from clsx.log import Log, silent
from clsx.quality.calibration import calibrate_manifest
from clsx.quality.metrics import scalar_metrics
from clsx.train.augment import auto_copies, perturbed
from clsx.train.config import DistillConfig, TrainConfig
from clsx.train.soft_labels import soft_label_loss
from clsx.train.static_student import (
    STATIC,
    STATIC_MAX_LENGTH,
    fit_head,
    save_static_student,
    static_dims,
    token_embeddings,
)
from clsx.train.trainer import TrainResult, Variant, checkpoints, fit, split, start_run
from clsx.train.trainer import work_directory as train_work_directory

PREFIX = "teacher_"  # of the teacher's output columns in the work directory's files
TABULAR = (".csv", ".jsonl", ".json")  # --data formats copied to Parquet for batch-predict
LABELLING_FILE = "labelling.json"  # in the work directory: which teacher labelled which data


@dataclass(frozen=True)
class DistillResult:
    """The student's training result and, with ``--eval``, both models' metrics on it and
    how often the student decides as the teacher does (``agreement``; regression:
    ``mse_to_teacher``)."""

    train: TrainResult
    rows: dict[str, int]
    evaluation: dict[str, Any]


@dataclass(frozen=True)
class TeacherLabels:
    """The rows the student learns from, with text: the teacher's probabilities, whether a
    gold label exists (1.0) and the hard targets (the gold label there, else the teacher's
    decision); ``decided`` holds the teacher's decisions alone; ``copies`` the perturbed
    copies of the ``--data`` rows."""

    texts: list[str]
    probs: np.ndarray
    has_gold: np.ndarray
    targets: np.ndarray
    decided: np.ndarray
    counts: dict[str, int]
    copies: Copies


@dataclass(frozen=True)
class Copies:
    """The ``--augment`` copies the teacher labelled (:mod:`clsx.train.augment`): texts, the
    teacher's probabilities and decisions, and the row of :class:`TeacherLabels` each copies.
    A copy trains the student only where the row it copies does."""

    texts: list[str]
    probs: np.ndarray
    decided: np.ndarray
    origins: np.ndarray

    def of(self, rows: np.ndarray) -> np.ndarray:
        """The copies of ``rows``."""
        return np.flatnonzero(np.isin(self.origins, rows))


def distill(config: DistillConfig, log: Log = silent) -> DistillResult:
    """Label ``config.data`` with the teacher and train the student on its soft labels (see
    the module docstring); the output appears only when complete."""
    teacher = open_artifact(config.teacher, allow_pickle=config.training.get("allow_pickle",
                                                                             False))
    manifest = teacher.manifest
    student = config.student_config(manifest.problem_type)
    work = labels_directory(config.output)
    if work.exists() and not student.resume:
        raise ClsxError(f"an earlier run left teacher labels in {work}; add --resume to "
                        "continue it, or delete that directory to start over")
    dims = static_dims(config.student)
    if dims is not None:
        return _distill_static(config, teacher, student, dims, work, log)
    # The student continues from a checkpoint only where one was saved (a run killed while
    # the teacher labelled has none).
    student = replace(student, resume=student.resume and bool(
        checkpoints(train_work_directory(student.output))))
    checkpoint = start_run(student)
    gold, eval_data = _labelled_inputs(student, manifest)
    resolve_model(student.model, log)  # a wrong --student fails before the teacher runs
    teacher_fingerprint = teacher.fingerprint
    labels = _teacher_labels(config, manifest, student, gold, work, log,
                             _labelling(config, student, teacher_fingerprint))
    chosen, eval_part = _held_out(labels, manifest, student, eval_data)
    rows = _transfer_rows(labels, chosen)
    train_data = LabelledData(rows.texts, rows.targets, manifest.labels,
                              pa.table({"row": rows.origins}))
    record = _record(config, teacher_fingerprint, labels.counts)
    teacher_eval = _evaluate_teacher(config, student) if eval_data is not None else None
    evaluation: dict[str, Any] = {}

    def finish(student_manifest: Manifest, logits: np.ndarray) -> Manifest:
        if teacher_eval is not None:
            evaluation.update(_compare(student, student_manifest, eval_data, logits,
                                       teacher_eval))
        return student_manifest.replace(distillation={
            **record, **({"eval": evaluation} if evaluation else {})})

    variant = Variant(extras={"teacher": rows.probs, "gold": rows.has_gold},
                      trainer_class=_trainer_class(manifest.problem_type, config.temperature,
                                                   config.alpha),
                      finish=finish)
    result = fit(student, train_data, eval_part, checkpoint, log, variant)
    shutil.rmtree(work, ignore_errors=True)
    return DistillResult(result, labels.counts, evaluation)


def _distill_static(config: DistillConfig, teacher: Artifact, student: TrainConfig, dims: int,
                    work: Path, log: Log) -> DistillResult:
    """:func:`distill` for ``--student static[:DIMS]`` (:mod:`clsx.train.static_student`):
    the same teacher labels, split and evaluation; token vectors and a small head instead
    of a fine-tuned transformer."""
    started = time.perf_counter()
    manifest = teacher.manifest
    check_output_directory(config.output, student.overwrite)  # before minutes of labelling
    gold, eval_data = _labelled_inputs(student, manifest)
    embeddings = token_embeddings(teacher, dims, work, log)
    labels = _teacher_labels(config, manifest, student, gold, work, log,
                             _labelling(config, student, teacher.fingerprint))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embeddings.encoder)
    chosen, eval_part = _held_out(labels, manifest, student, eval_data)
    rows = _transfer_rows(labels, chosen)
    log(f"Training the static head on {len(rows.texts)} rows ...")
    head = fit_head(embeddings.features(tokenizer, rows.texts), rows.probs, rows.targets,
                    rows.has_gold, manifest.problem_type, config.temperature, config.alpha,
                    student.seed)
    held_out = head.logits(embeddings.features(tokenizer, list(eval_part.texts)))
    student_manifest = Manifest(
        family=manifest.family if embeddings.source == "teacher" else "bert",
        labels=manifest.labels, problem_type=manifest.problem_type,
        max_length=STATIC_MAX_LENGTH, pad_token_id=tokenizer.pad_token_id, format="static",
        base_model=f"{STATIC}:{dims}",
        training={"eval_fraction": student.eval_fraction, "seed": student.seed})
    if manifest.problem_type != "regression":
        student_manifest = calibrate_manifest(student_manifest, held_out, eval_part.targets,
                                              student.calibration, log)
    evaluation: dict[str, Any] = {}
    if eval_data is not None:
        evaluation = _compare(student, student_manifest, eval_data, held_out,
                              _evaluate_teacher(config, student))
    student_manifest = student_manifest.replace(distillation={
        **_record(config, teacher.fingerprint, labels.counts),
        "embeddings": embeddings.describe(), **({"eval": evaluation} if evaluation else {})})
    with staged_directory(config.output, student.overwrite) as stage:
        save_static_student(stage, embeddings, head, student_manifest)
    shutil.rmtree(work, ignore_errors=True)
    result = TrainResult(config.output, student_manifest, {}, [],
                         time.perf_counter() - started)
    return DistillResult(result, labels.counts, evaluation)


def _labelled_inputs(student: TrainConfig, teacher: Manifest
                     ) -> tuple[LabelledData | None, LabelledData | None]:
    """The ``--train`` rows (:func:`_gold`) and the ``--eval`` rows, in the teacher's label
    order (None where not given)."""
    gold = _gold(student, teacher) if student.train is not None else None
    eval_data = (read_labelled(student.eval, student.text_column, student.label_column,
                               teacher.problem_type, labels=teacher.labels,
                               separator=student.label_separator)
                 if student.eval is not None else None)
    return gold, eval_data


def _held_out(labels: TeacherLabels, teacher: Manifest, student: TrainConfig,
              eval_data: LabelledData | None) -> tuple[np.ndarray, LabelledData]:
    """The rows of ``labels`` the student trains on, and the rows it is calibrated and
    judged on: ``--eval`` where given (then every row trains), else a split of the
    teacher-labelled rows (``--eval-fraction``) whose targets are the teacher's decisions."""
    rows = np.arange(len(labels.texts))
    if eval_data is not None:
        return rows, eval_data
    everything = LabelledData(labels.texts, labels.decided, teacher.labels,
                              pa.table({"row": rows}))
    train_part, eval_part = split(everything, student.eval_fraction, student.seed,
                                  teacher.problem_type)
    return train_part.table.column("row").to_numpy(), eval_part


def _record(config: DistillConfig, teacher_fingerprint: str, counts: dict[str, int]
            ) -> dict[str, Any]:
    """The manifest's ``distillation`` record: the teacher, the settings, the row counts."""
    return {"teacher": str(Path(config.teacher).resolve()),
            "teacher_fingerprint": teacher_fingerprint,
            "teacher_backend": config.teacher_backend, "temperature": config.temperature,
            "alpha": config.alpha, **counts}


def _labelling(config: DistillConfig, student: TrainConfig, teacher_fingerprint: str
               ) -> dict[str, str | None]:
    """What decides the teacher's labels: the teacher (path, fingerprint, backend) and the
    texts it labels."""
    return {"teacher": str(Path(config.teacher).resolve()), "fingerprint": teacher_fingerprint,
            "backend": config.teacher_backend, "data": str(config.data),
            "train": None if student.train is None else str(student.train)}


def _check_labelling(work: Path, labelling: dict[str, str | None]) -> None:
    """Record ``labelling`` in ``work``; on a resume, refuse labels made otherwise (a
    retrained teacher, other data): complete labels would otherwise be reused as they are."""
    path = work / LABELLING_FILE
    if not path.is_file():
        durable.write_file(path, json.dumps(labelling, indent=2) + "\n")
        return
    recorded = json.loads(path.read_text())
    changed = [name for name, value in labelling.items() if recorded.get(name) != value]
    if changed:
        raise ClsxError(f"the teacher labels in {work} were made with another "
                        f"{', '.join(changed)} (teacher {recorded.get('teacher')}, data "
                        f"{recorded.get('data')}); delete {work} to label again")


def _teacher_labels(config: DistillConfig, teacher: Manifest, student: TrainConfig,
                    gold: LabelledData | None, work: Path, log: Log,
                    labelling: dict[str, str | None]) -> TeacherLabels:
    """The teacher's outputs on the ``--data`` rows, then on the ``--train`` rows; rows
    without text are dropped (and counted). ``labelling`` says what made them (see
    :func:`_check_labelling`)."""
    durable.make_directory(work)
    _check_labelling(work, labelling)
    try:
        texts, probs = _teacher_outputs(config, teacher, _parquet_texts(config, student, work),
                                        "data", student.text_column, work, log)
        unlabelled = len(texts)
        if gold is not None:
            gold_texts, gold_probs = _teacher_outputs(config, teacher, _gold_texts(gold, work),
                                                      "train", "text", work, log)
            texts, probs = texts + gold_texts, np.concatenate([probs, gold_probs])
    except BaseException:
        if all(path.name == LABELLING_FILE for path in work.iterdir()):  # nothing to resume
            shutil.rmtree(work)  # leave no trace
        raise
    kept = np.array([text is not None and bool(text.strip()) and not np.isnan(row).any()
                     for text, row in zip(texts, probs, strict=True)], dtype=bool)
    if not kept.any():
        shutil.rmtree(work, ignore_errors=True)
        raise ClsxError(f"{config.data}: no row has a text to distil from ({len(kept)} rows, "
                        "all null or blank)")
    dropped = int((~kept).sum())
    if dropped:
        log(f"Dropped {dropped} rows without text (null or blank); "
            f"{int(kept.sum())} rows remain")
    has_gold = (np.arange(len(texts)) >= unlabelled).astype(np.float32)
    decided = _decisions(teacher, probs)
    targets = decided.copy()
    if gold is not None:
        targets[unlabelled:] = gold.targets
    rows = np.flatnonzero(kept)
    texts = [texts[i] for i in rows]
    copies = _copies(config, teacher, student, texts[:int(kept[:unlabelled].sum())], work, log)
    counts = {"unlabelled_rows": int(kept[:unlabelled].sum()),
              "gold_rows": int(kept[unlabelled:].sum()), "dropped_rows": dropped,
              "augmented_rows": len(copies.texts)}
    return TeacherLabels(texts, probs[rows], has_gold[rows], targets[rows], decided[rows],
                         counts, copies)


def _copies(config: DistillConfig, teacher: Manifest, student: TrainConfig, texts: list[str],
            work: Path, log: Log) -> Copies:
    """The ``--augment`` copies of the ``--data`` ``texts``, labelled by the teacher (their
    files are named by the copies and seed, so a resume with other settings labels anew)."""
    count = config.augment
    if count is None:
        count = auto_copies(len(texts)) if static_dims(config.student) is not None else 0
    made, origins = perturbed(texts, count, student.seed) if count else ([], [])
    probs = np.zeros((0, teacher.num_labels), np.float32)
    if made:
        name = f"augmented-{count}-{student.seed}"
        source = work / f"{name}-texts.parquet"
        if not source.exists():
            _write_texts(pa.table({"text": pa.array(made, pa.string())}), source)
        log(f"The teacher labels {len(made)} perturbed copies of the {len(texts)} --data "
            f"texts ({count} each; --augment) ...")
        _, probs = _teacher_outputs(config, teacher, source, name, "text", work, log)
    return Copies(made, probs, _decisions(teacher, probs), np.array(origins, np.int64))


@dataclass(frozen=True)
class TransferRows:
    """What the student trains on: the chosen rows, then the copies of them."""

    texts: list[str]
    probs: np.ndarray
    targets: np.ndarray
    has_gold: np.ndarray
    origins: np.ndarray  # the row of TeacherLabels each comes from


def _transfer_rows(labels: TeacherLabels, chosen: np.ndarray) -> TransferRows:
    """The rows ``chosen`` for training and the ``--augment`` copies of them (a copy of a
    held-out row would leak it into training)."""
    copies = labels.copies.of(chosen)
    return TransferRows(
        [labels.texts[i] for i in chosen] + [labels.copies.texts[i] for i in copies],
        np.concatenate([labels.probs[chosen], labels.copies.probs[copies]]),
        np.concatenate([labels.targets[chosen], labels.copies.decided[copies]]),
        np.concatenate([labels.has_gold[chosen], np.zeros(len(copies), np.float32)]),
        np.concatenate([chosen, labels.copies.origins[copies]]))


def labels_directory(output: Path) -> Path:
    """Where the teacher's outputs for a student at ``output`` wait until it is saved."""
    return output.with_name(f".{output.name}.clsx-distill")


def _gold(student: TrainConfig, teacher: Manifest) -> LabelledData:
    """The ``--train`` rows, their labels in the teacher's order; a label the teacher does not
    have is refused."""
    read = dict(text_column=student.text_column, label_column=student.label_column,
                problem_type=teacher.problem_type, separator=student.label_separator)
    data = read_labelled(student.train, **read)
    if teacher.problem_type == "regression":
        return data
    unknown = sorted(set(data.labels) - set(teacher.labels))
    if unknown:
        raise ClsxError(
            f"{student.train}: the labels differ from the teacher's: "
            f"{', '.join(map(repr, unknown[:10]))} are not among the teacher's labels "
            f"({', '.join(teacher.labels)}); the student learns the teacher's label set")
    return read_labelled(student.train, labels=teacher.labels, **read)


def _parquet_texts(config: DistillConfig, student: TrainConfig, work: Path) -> Path:
    """``--data`` as batch-predict reads it: Parquet as it is, CSV / JSON lines copied."""
    if Path(config.data).suffix.lower() not in TABULAR:
        return Path(config.data)
    target = work / "data-texts.parquet"
    if not target.exists():
        texts = read_texts(config.data, student.text_column)
        _write_texts(pa.table({student.text_column: pa.array(texts, pa.string())}), target)
    return target


def _gold_texts(gold: LabelledData, work: Path) -> Path:
    """The texts of the ``--train`` rows as a Parquet file for batch-predict."""
    target = work / "train-texts.parquet"
    if not target.exists():
        _write_texts(pa.table({"text": pa.array(gold.texts, pa.string())}), target)
    return target


def _write_texts(table: pa.Table, target: Path) -> None:
    temporary = durable.temporary_name(target)
    try:
        pq.write_table(table, temporary)
        durable.rename(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _teacher_outputs(config: DistillConfig, teacher: Manifest, source: Path, name: str,
                     text_column: str, work: Path, log: Log
                     ) -> tuple[list[str | None], np.ndarray]:
    """The texts of ``source`` and the teacher's probabilities for them, row for row (NaN
    rows for null texts), through batch-predict into ``work`` (resumable)."""
    output = work / f"{name}.parquet"
    summary = batch_predict(BatchPredictConfig(
        input=str(source), output=output, model=Path(config.teacher),
        backend=config.teacher_backend, text_column=text_column, keep_columns=(text_column,),
        output_prefix=PREFIX, resume=True, auto_formats=False,  # the teacher's own values
        allow_pickle=config.training.get("allow_pickle", False)))
    log(f"Teacher on {source}: {summary.line()}")
    table = pq.read_table(output, columns=[text_column, f"{PREFIX}probs"])
    column = table.column(f"{PREFIX}probs").combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    probs = np.full((len(table), teacher.num_labels), np.nan, np.float32)
    probs[valid] = values.reshape(-1, teacher.num_labels)
    return python_strings(table.column(text_column), text_column), probs


def _decisions(teacher: Manifest, probs: np.ndarray) -> np.ndarray:
    """The teacher's decisions from its probabilities, as the targets of its problem type:
    label ids, multi-hot rows at its thresholds, or values."""
    rule = DecisionRule.of(teacher)
    filled = np.nan_to_num(probs)
    if teacher.problem_type == SINGLE:
        return filled.argmax(axis=1).astype(np.int64)
    if teacher.problem_type == MULTI:
        return (filled >= rule.cut).astype(np.float32)
    return filled[:, 0].astype(np.float32)


def _eval_config(model: Path, student: TrainConfig, backend: str) -> EvalConfig:
    return EvalConfig(model, student.eval, text_column=student.text_column,
                      label_column=student.label_column, label_separator=student.label_separator,
                      backend=backend, allow_pickle=student.allow_pickle)


def _evaluate_teacher(config: DistillConfig, student: TrainConfig) -> EvalResult:
    return evaluate(_eval_config(Path(config.teacher), student, config.teacher_backend))


def _compare(student: TrainConfig, manifest: Manifest, eval_data: LabelledData,
             logits: np.ndarray, teacher: EvalResult) -> dict[str, Any]:
    """Both models' metrics on ``--eval`` and how often the student decides as the teacher."""
    mine = score(_eval_config(student.output, student, "torch"), manifest, eval_data, logits,
                 DecisionRule.of(manifest))
    compared: dict[str, Any] = {"rows": len(eval_data.texts),
                                "teacher": scalar_metrics(teacher.metrics),
                                "student": scalar_metrics(mine.metrics)}
    if manifest.problem_type == "regression":
        gap = (np.array(mine.predictions.column("predicted_score").to_pylist(), np.float64)
               - np.array(teacher.predictions.column("predicted_score").to_pylist(), np.float64))
        compared["mse_to_teacher"] = float(np.mean(gap ** 2))
    else:
        same = [a == b for a, b in zip(mine.predictions.column("predicted_label").to_pylist(),
                                       teacher.predictions.column("predicted_label").to_pylist(),
                                       strict=True)]
        compared["agreement"] = float(np.mean(same))
    return compared


def _trainer_class(problem_type: str, temperature: float, alpha: float) -> type:
    """A :class:`transformers.Trainer` whose loss is :func:`soft_label_loss` on batches that
    carry the teacher's probabilities (training); other batches (evaluation) keep the
    model's own loss."""
    from transformers import Trainer

    class DistillTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "teacher" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs = dict(inputs)
            teacher, gold, labels = inputs.pop("teacher"), inputs.pop("gold"), inputs.pop(
                "labels")
            outputs = model(**inputs)
            loss = soft_label_loss(outputs.logits, labels, teacher, gold, problem_type,
                                   temperature, alpha)
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer
