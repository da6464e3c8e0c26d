"""The Hugging Face Trainer as clsx runs it: its arguments, the metric that keeps the best
epoch, Ctrl-C as save-and-stop, and what its log says about the kept epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clsx.artifacts.manifest import Manifest
from clsx.log import Log, silent
from clsx.quality.metrics import compute_metrics, scalar_metrics, tune_threshold
from clsx.train.config import TrainConfig
from clsx.train.dataset import Collator, EncodedDataset, per_text


def build_trainer(model: Any, config: TrainConfig, manifest: Manifest, work: Path,
                  train_set: EncodedDataset, eval_set: EncodedDataset,
                  trainer_class: type | None = None) -> Any:
    """A Trainer (``trainer_class``, default :class:`transformers.Trainer`) that trains
    ``model`` on ``train_set``, evaluates each epoch on ``eval_set`` and keeps the best."""
    from transformers import Trainer, TrainingArguments

    metric, greater_is_better = selection_metric(config.problem_type)
    args = TrainingArguments(
        output_dir=str(work),
        learning_rate=config.lr,
        warmup_steps=config.warmup,  # a float below 1 is a share of the steps
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        num_train_epochs=config.epochs,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=greater_is_better,
        save_total_limit=2,
        seed=config.seed,
        bf16=config.bf16,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=False,  # the CLI quiets transformers' logging, which would hide the bar
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )

    def metrics(prediction) -> dict[str, float]:
        logits, targets = per_text(prediction, eval_set, config)
        threshold = 0.5
        if config.problem_type == "multi_label_classification":
            # Rare labels stay below 0.5 for a while; judge each epoch at its best threshold
            # so that the kept epoch is not chosen by an arbitrary cut-off.
            threshold = tune_threshold(logits, targets)
        return scalar_metrics(compute_metrics(logits, targets,
                                              config.problem_type, manifest.labels, threshold))

    return (trainer_class or Trainer)(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=Collator(manifest.padding_id, config.problem_type),
        compute_metrics=metrics)


class Interrupt:
    """Ctrl-C once: finish the current step, save a checkpoint, stop. Twice: abort."""

    def __init__(self, log: Log = silent) -> None:
        self.flag = False
        self.log = log

    def handle(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        # A line of its own: the progress bar is mid-line when the signal arrives.
        self.log("\nStopping after this step to save a checkpoint (Ctrl-C again to abort) ...")


def stop_on_interrupt(trainer: Any, log: Log = silent) -> Interrupt:
    """Register a callback that turns a pending interrupt into save-and-stop."""
    from transformers import TrainerCallback

    interrupt = Interrupt(log)

    class SaveAndStop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if interrupt.flag:
                control.should_save = True
                control.should_training_stop = True
            return control

    trainer.add_callback(SaveAndStop())
    return interrupt


def selection_metric(problem_type: str) -> tuple[str, bool]:
    """The metric that picks the kept epoch, and whether higher is better."""
    return ("mse", False) if problem_type == "regression" else ("macro_f1", True)


def epoch_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """One evaluation entry of the Trainer's log as metrics.json records it."""
    return scalar_metrics({k.removeprefix("eval_"): v for k, v in entry.items()})


def best_epoch(state: Any) -> dict[str, float]:
    """The logged metrics of the weights the Trainer ended with, from its own record.

    With ``load_best_model_at_end`` those are the ``best_model_checkpoint``'s (or the last
    step's when no epoch ever improved, e.g. every metric NaN). Choosing again from the log
    could name an epoch other than the one saved: ``max``/``min`` return a leading NaN (every
    comparison with it is false), which the Trainer never keeps.
    """
    step = state.global_step
    if state.best_model_checkpoint is not None:
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
    for entry in state.log_history:
        if "eval_loss" in entry and entry.get("step") == step:
            return epoch_metrics(entry)
    return {}  # the final weights were never evaluated (e.g. --epochs 2.5)
