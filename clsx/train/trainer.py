"""Fine-tuning with the Hugging Face Trainer (+ peft LoRA), then merge and save an artifact.

Checkpoints live in a hidden work directory beside the output (``.NAME.clsx-train``) so
that ``--resume`` can continue after a crash or Ctrl-C; the output directory itself appears
only once the merged model, tokenizer, manifest and metrics are all written.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clsx.artifacts.artifact import pad_token_id, save_artifact
from clsx.artifacts.bundled import resolve_model
from clsx.artifacts.manifest import Manifest, check_family
from clsx.errors import ClsxError
from clsx.inference.decisions import MULTI_LABEL_SEPARATOR
from clsx.inference.encoding import TextEncoder
from clsx.io.outputs import check_output_directory
from clsx.io.staging import staged_directory
from clsx.io.tables import LabelledData, read_labelled
from clsx.log import Log, silent
from clsx.quality.calibration import before_and_after, calibrate_manifest
from clsx.train.config import TrainConfig
from clsx.train.dataset import EncodedDataset, per_text
from clsx.train.hf_trainer import best_epoch, build_trainer, epoch_metrics, stop_on_interrupt
from clsx.train.prompt import build_template, read_label_descriptions


@dataclass(frozen=True)
class TrainResult:
    """Where the model went, the metrics of the kept (best) epoch, and the calibration
    measures on the eval split (``ece``, ``ece_uncalibrated``, ...; empty when not
    calibrated)."""

    output: Path
    manifest: Manifest
    best_metrics: dict[str, float]
    epochs: list[dict[str, float]]
    seconds: float
    calibration: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """What a variant of training (distillation) changes in :func:`fit`.

    ``extras``: per-row arrays beside the targets of the training rows (e.g. a teacher's
    probabilities), handed to the loss as batch entries of the same names; ``trainer_class``:
    the :class:`transformers.Trainer` subclass whose ``compute_loss`` uses them; ``finish``:
    the last word on the manifest before it is saved, given the kept model's logits on the
    eval split (one row per text).
    """

    extras: dict[str, np.ndarray] = field(default_factory=dict)
    trainer_class: type | None = None
    finish: Callable[[Manifest, np.ndarray], Manifest] | None = None


def train(config: TrainConfig, log: Log = silent, callbacks: Sequence[Any] = ()
          ) -> TrainResult:
    """Run one fine-tuning job end to end (see the module docstring for the layout).

    ``log`` hears the status lines (a bundled model's first-use install, Ctrl-C handling).
    A Ctrl-C that saved a checkpoint ends in :class:`KeyboardInterrupt`, whose message says
    how to resume. ``callbacks`` are extra ``transformers.TrainerCallback`` objects
    (``clsx sweep`` prunes trials with one); an exception raised in one ends the run and
    leaves its checkpoints in the work directory.
    """
    checkpoint = start_run(config)
    train_data, eval_data = _load_data(config)
    return fit(config, train_data, eval_data, checkpoint, log, callbacks=callbacks)


def start_run(config: TrainConfig) -> str | None:
    """Refuse an existing output (without ``overwrite``) and check the work directory against
    ``resume``; return the checkpoint to continue from (None: a fresh start)."""
    check_output_directory(config.output, config.overwrite)
    return _checkpoint_to_resume(work_directory(config.output), config.resume)


def work_directory(output: Path) -> Path:
    """Where the checkpoints of a run writing ``output`` are kept until it finishes."""
    return output.with_name(f".{output.name}.clsx-train")


def checkpoints(work: Path) -> list[Path]:
    """The checkpoints in ``work``, oldest first."""
    return sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))


def fit(config: TrainConfig, train_data: LabelledData, eval_data: LabelledData,
        checkpoint: str | None, log: Log = silent, variant: Variant | None = None,
        callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train on ``train_data``, keep the best epoch on ``eval_data``, calibrate and save:
    the part of :func:`train` after its data is read (``checkpoint`` from :func:`start_run`).

    The label set is ``train_data.labels``; ``variant`` changes the loss and the manifest
    (distillation); ``callbacks`` are :func:`train`'s.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    variant = variant or Variant()
    started = time.perf_counter()
    set_seed(config.seed)  # the new head's initialisation too, so that runs repeat
    work = work_directory(config.output)
    reference = resolve_model(config.model, log)
    labels = train_data.labels
    trust = {"trust_remote_code": config.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(reference, **trust)
    family = _family_of(reference, trust)
    manifest = _manifest(config, family, labels, tokenizer)
    num_labels = 1 if config.problem_type == "regression" else len(labels)
    model = AutoModelForSequenceClassification.from_pretrained(
        reference, num_labels=num_labels, problem_type=config.problem_type,
        id2label=dict(enumerate(labels[:num_labels])),
        label2id={label: i for i, label in enumerate(labels[:num_labels])},
        dtype=torch.float32, use_safetensors=None if config.allow_pickle else True, **trust,
    )
    model.config.pad_token_id = manifest.pad_token_id
    if config.problem_type == "multi_label_classification":
        _start_at_label_prior(model, train_data.targets)
    if config.method == "lora":
        model = _with_lora(model, config, manifest.is_decoder)
    encoder = TextEncoder(tokenizer, manifest)
    train_set = EncodedDataset.of(encoder.encode(train_data.texts), train_data.targets,
                                  variant.extras)
    eval_set = EncodedDataset.of(encoder.encode(eval_data.texts), eval_data.targets)
    trainer = build_trainer(model, config, manifest, work, train_set, eval_set,
                       variant.trainer_class)
    for callback in callbacks:
        trainer.add_callback(callback)
    interrupted = stop_on_interrupt(trainer, log)
    # Signal handlers can only be installed from the main thread (the CLI's case).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.getsignal(signal.SIGINT)
    if in_main_thread:
        signal.signal(signal.SIGINT, interrupted.handle)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
    if interrupted.flag:
        raise KeyboardInterrupt(f"Interrupted: a checkpoint is saved in {work}; continue with "
                                "the same command and --resume.")
    epochs = [epoch_metrics(entry) for entry in trainer.state.log_history
              if "eval_loss" in entry]
    best = best_epoch(trainer.state)
    manifest = manifest.replace(training={**config.to_json(), "best_epoch": best.get("epoch")})
    calibration: dict[str, float] = {}
    # The kept epoch's model is loaded: calibrate it on the eval split, then (multi-label)
    # tune its cut-offs on the calibrated probabilities.
    logits, targets = per_text(trainer.predict(eval_set), eval_set, config)
    if config.problem_type != "regression":
        manifest = calibrate_manifest(manifest, logits, targets, config.calibration, log)
        if config.calibration:
            calibration = before_and_after(logits, targets, config.problem_type,
                                           manifest.temperatures)
    if variant.finish is not None:
        manifest = variant.finish(manifest, logits)
    with staged_directory(config.output, config.overwrite) as stage:
        if config.method == "lora":
            trainer.model.save_pretrained(stage / "adapter")
            merged = trainer.model.merge_and_unload()
        else:
            merged = trainer.model
        save_artifact(merged.eval(), tokenizer, stage, manifest)
        (stage / "metrics.json").write_text(json.dumps(
            {"best": best, "epochs": epochs, **({"calibration": calibration} if calibration
                                                else {})}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return TrainResult(config.output, manifest, best, epochs, time.perf_counter() - started,
                       calibration)


def _load_data(config: TrainConfig) -> tuple[LabelledData, LabelledData]:
    read = dict(text_column=config.text_column, label_column=config.label_column,
                problem_type=config.problem_type, separator=config.label_separator,
                storage_options=config.storage_options)
    train_data = read_labelled(config.train, **read)
    blank = [i for i, text in enumerate(train_data.texts) if not text.strip()]
    if blank:
        raise ClsxError(f"{config.train}: {len(blank)} rows have an empty or whitespace-only "
                        f"{config.text_column!r} (first at row {blank[0]}); drop them")
    if config.problem_type != "regression" and len(train_data.labels) < 2:
        raise ClsxError(f"{config.train}: column {config.label_column!r} has only one class "
                        f"({train_data.labels[0]!r}); a classifier needs at least two")
    if config.problem_type == "multi_label_classification":
        _refuse_separators_in_labels(config, train_data.labels)
    if config.eval is not None:
        return train_data, read_labelled(config.eval, labels=train_data.labels, **read)
    return split(train_data, config.eval_fraction, config.seed, config.problem_type)


def _refuse_separators_in_labels(config: TrainConfig, labels: Sequence[str]) -> None:
    """Multi-label names must not contain a separator.

    Predictions join a row's labels with ``,`` (the output ``label`` column) and data may
    join them with --label-separator; a name holding either could not be split back (list
    columns can carry such names, e.g. ``["a,b"]``).
    """
    separators = sorted({MULTI_LABEL_SEPARATOR, config.label_separator})
    clashes = [label for label in labels if any(s in label for s in separators)]
    if clashes:
        raise ClsxError(
            f"{config.train}: multi-label names must not contain "
            f"{' or '.join(map(repr, separators))}, which join labels in the data and in the "
            f"predicted 'label' column; rename {', '.join(map(repr, clashes[:5]))}"
            f"{f' and {len(clashes) - 5} more' if len(clashes) > 5 else ''}"
        )


def split(data: LabelledData, fraction: float, seed: int, problem_type: str
           ) -> tuple[LabelledData, LabelledData]:
    """A stratified (single-label) or plain random split with a fixed seed."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(data.texts))
    stratify = None
    if problem_type == "single_label_classification":
        counts = np.bincount(data.targets, minlength=len(data.labels))
        stratify = data.targets if counts.min() >= 2 else None
    try:
        train_rows, eval_rows = train_test_split(rows, test_size=fraction, random_state=seed,
                                                 stratify=stratify)
    except ValueError as exc:
        raise ClsxError(f"cannot split {len(rows)} rows for evaluation ({exc}); pass --eval "
                        "FILE or more data") from exc

    def subset(selected: np.ndarray) -> LabelledData:
        return LabelledData([data.texts[i] for i in selected], data.targets[selected],
                            data.labels, data.table.take(selected))

    return subset(np.sort(train_rows)), subset(np.sort(eval_rows))


def _family_of(reference: str, trust: dict[str, bool]) -> str:
    from transformers import AutoConfig

    try:
        family = AutoConfig.from_pretrained(reference, **trust).model_type
    except (OSError, ValueError) as exc:
        raise ClsxError(f"cannot load a model config from {reference!r}: "
                        f"{str(exc).splitlines()[0]}") from exc
    return check_family(family, reference)


def _manifest(config: TrainConfig, family: str, labels: tuple[str, ...], tokenizer: Any
              ) -> Manifest:
    descriptions = (read_label_descriptions(config.label_descriptions, labels)
                    if config.label_descriptions else None)
    template = build_template(config.template, labels, descriptions, config.chat, tokenizer)
    return Manifest(
        family=family,
        labels=labels[:1] if config.problem_type == "regression" else labels,
        problem_type=config.problem_type,
        max_length=config.max_length,
        pad_token_id=pad_token_id(family, tokenizer),
        template=template,
        long_text=config.long_text_setting,
        base_model=config.model,
    )


def _start_at_label_prior(model: Any, targets: np.ndarray) -> None:
    """Set a multi-label head's bias to each label's log-odds in the training data.

    With many rare labels, a head that starts at 0 (probability 0.5 everywhere) spends its
    first steps pushing every output towards the label prior, and those large, input-blind
    gradients can flatten the encoder into a constant output. Starting at the prior removes
    them. Heads without a bias (the decoders' ``score``) are left as they are.
    """
    head = getattr(model, "classifier", None)
    bias = getattr(head, "bias", None)
    if not isinstance(bias, torch.nn.Parameter):
        return
    share = np.clip(targets.mean(axis=0), 1e-4, 1 - 1e-4)
    with torch.no_grad():
        bias.copy_(torch.from_numpy(np.log(share / (1 - share))).to(bias.dtype))


def _with_lora(model: Any, config: TrainConfig, is_decoder: bool) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=config.lora_r, lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout, target_modules=config.targets_for(is_decoder),
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ClsxError(f"LoRA setup failed: {str(exc).splitlines()[0]} (check "
                        "--target-modules)") from exc


def _checkpoint_to_resume(work: Path, resume: bool) -> str | None:
    saved = checkpoints(work)
    if resume:
        if not saved:
            raise ClsxError(f"--resume: no checkpoint in {work}; start without --resume")
        return str(saved[-1])
    if saved:
        raise ClsxError(f"an earlier run left checkpoints in {work}; add --resume to continue "
                        "it, or delete that directory to start over")
    shutil.rmtree(work, ignore_errors=True)
    return None
