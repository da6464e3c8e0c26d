"""``clsx train``: flags -> :class:`~clsx.train.config.TrainConfig` ->
:func:`clsx.train.trainer.train`; and the training options ``distill`` and ``sweep`` share."""

from __future__ import annotations

from pathlib import Path

import click

from clsx.cli.console import echo_decisions, echo_err
from clsx.cli.options import (
    LABEL_SEPARATOR_HELP,
    allow_pickle_option,
    comma_list,
    default_note,
    given,
    long_text_options,
    storage_option,
)
from clsx.train.config import METHODS, PROBLEM_ALIASES, TrainConfig, refuse_idle_options


def train_data_options(command):
    """``--model``, ``--train``, ``--eval`` and ``--problem-type``: what ``clsx train`` and
    every trial of ``clsx sweep`` train on."""
    options = [
        click.option("--model", "-m", required=True,
                     help="Base model: a local HF directory, a hub id, or a bundled alias "
                          "(see `clsx models`)."),
        click.option("--train", "train_path", required=True,
                     help="Training data: Parquet, JSONL or CSV (a path or an s3://, gs://... "
                          "URI)."),
        click.option("--eval", "eval_path",
                     help="Evaluation data (default: a stratified split of --train)."),
        click.option("--problem-type", type=click.Choice(tuple(PROBLEM_ALIASES)),
                     help=default_note(TrainConfig, "problem_type").strip()),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def train_options(leave_out: tuple[str, ...] = ()):
    """A decorator adding the options of ``clsx train`` that say how a model trains, beyond
    which model and data (:func:`train_data_options`) and ``--output``, but ``leave_out``
    (parameter names): shared by every command that trains (``distill``, and ``sweep``,
    which turns some into search flags). Each default is the TrainConfig field's."""
    options = [
        click.option("--text-column", help=default_note(TrainConfig, "text_column").strip()),
        click.option("--label-column", help=default_note(TrainConfig, "label_column").strip()),
        click.option("--label-separator",
                     help=LABEL_SEPARATOR_HELP + default_note(TrainConfig, "label_separator")),
        click.option("--method", type=click.Choice(METHODS),
                     help=default_note(TrainConfig, "method").strip()),
        click.option("--epochs", type=float, help=default_note(TrainConfig, "epochs").strip()),
        click.option("--lr", type=float, help=default_note(TrainConfig, "lr").strip()),
        click.option("--warmup", type=float,
                     help="Share of the steps over which the learning rate rises linearly "
                          "from 0 (the usual BERT fine-tuning recipe; 0 turns it off)."
                          + default_note(TrainConfig, "warmup")),
        click.option("--batch-size", type=int,
                     help=default_note(TrainConfig, "batch_size").strip()),
        click.option("--eval-batch-size", type=int,
                     help=default_note(TrainConfig, "eval_batch_size").strip()),
        click.option("--max-length", type=int,
                     help="Tokens per model input (also at predict time)."
                          + default_note(TrainConfig, "max_length")),
        long_text_options(training=True),
        click.option("--lora-r", type=int, help=default_note(TrainConfig, "lora_r").strip()),
        click.option("--lora-alpha", type=int,
                     help=default_note(TrainConfig, "lora_alpha").strip()),
        click.option("--lora-dropout", type=float,
                     help=default_note(TrainConfig, "lora_dropout").strip()),
        click.option("--target-modules", callback=comma_list,
                     help="LoRA targets (default: q/k/v/o/gate/up/down_proj for decoders, "
                          "query,key,value,dense for BERT)."),
        click.option("--lora-embeddings", is_flag=True,
                     help="Also put LoRA on the embedding layer."),
        click.option("--eval-fraction", type=float,
                     help="Share of --train held out when no --eval is given."
                          + default_note(TrainConfig, "eval_fraction")),
        click.option("--seed", type=int, help=default_note(TrainConfig, "seed").strip()),
        click.option("--template",
                     help="Input template with {text} (and optionally {labels}), e.g. "
                          "'Review: {text}'. Stored and applied at predict time."),
        click.option("--label-descriptions", type=click.Path(path_type=Path),
                     help="JSON {label: description} or 'label: description' lines, for "
                          "{labels}."),
        click.option("--chat", is_flag=True, help="Wrap the input in the model's chat template."),
        click.option("--calibration/--no-calibration", default=None,
                     help="Classifiers: fit temperature scaling on the eval split so that the "
                          "scores are probabilities (stored in clsx.json); --no-calibration "
                          "keeps the raw softmax / sigmoid."
                          + default_note(TrainConfig, "calibration")),
        click.option("--bf16", is_flag=True,
                     help="Train in bf16 mixed precision (AMX CPUs, GPUs)."),
        allow_pickle_option,
        click.option("--trust-remote-code", is_flag=True,
                     help="Let a hub base model run its own Python code (off by default)."),
        click.option("--resume", is_flag=True, help="Continue from the last checkpoint of a run."),
        click.option("--overwrite", is_flag=True, help="Replace --output if it exists."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        # click.option collects the options on the function until the command is made.
        command.__click_params__ = [param for param in command.__click_params__
                                    if param.name not in leave_out]
        return command

    return decorate


@click.command("train")
@train_data_options
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Directory for the merged model, tokenizer, clsx.json and metrics.json.")
@train_options()
@storage_option
def train_command(**options) -> None:
    """Fine-tune a classifier (LoRA or full) and save it merged, ready for export.

    Evaluates each epoch and keeps the best one (macro-F1; MSE for regression). Classifiers
    are then calibrated on the eval split (temperature scaling) and, multi-label, one
    threshold per label is tuned on the calibrated probabilities; both are stored with the
    model. Ctrl-C saves a checkpoint; rerun the same command with --resume to continue.
    """
    from clsx.quality.metrics import format_report
    from clsx.train.trainer import train

    options["train"] = options.pop("train_path")
    options["eval"] = options.pop("eval_path")
    options = given(options)
    refuse_idle_options(options)
    result = train(TrainConfig(**options), log=echo_err)
    click.echo(format_report(result.best_metrics), err=True)
    if result.calibration:  # ECE / Brier / NLL on the eval split, raw and calibrated
        click.echo(format_report(result.calibration), err=True)
    echo_decisions(result.manifest, "the eval split")
    click.echo(f"Trained in {result.seconds / 60:.1f} min; wrote {result.output}")

