"""``clsx calibrate``: flags -> :class:`~clsx.evaluation.config.CalibrateConfig` ->
:func:`clsx.evaluation.calibrate.calibrate`, then the calibration before and after."""

from __future__ import annotations

from pathlib import Path

import click

from clsx.cli.console import echo_decisions, echo_err
from clsx.cli.options import (
    LABEL_SEPARATOR_HELP,
    allow_pickle_option,
    given,
    storage_option,
    with_default,
)
from clsx.evaluation.config import CalibrateConfig
from clsx.inference.runners.base import DEVICES


@click.command("calibrate")
@click.option("--model", "-m", type=click.Path(path_type=Path), required=True,
              help="Merged PyTorch model directory (calibrate before exporting).")
@click.option("--data", required=True,
              help="Labelled data the model was not trained on: Parquet, JSONL or CSV (a "
                   "path or an s3://, gs://... URI).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Write a copy of --model with the new clsx.json here (default: update "
                   "--model's clsx.json in place).")
@click.option("--text-column", **with_default(CalibrateConfig, "text_column"))
@click.option("--label-column", **with_default(CalibrateConfig, "label_column"))
@click.option("--label-separator",
              **with_default(CalibrateConfig, "label_separator", LABEL_SEPARATOR_HELP))
@click.option("--device", type=click.Choice(DEVICES), **with_default(CalibrateConfig, "device"))
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@allow_pickle_option
@storage_option
def calibrate_command(**options) -> None:
    """Fit temperature scaling for MODEL on labelled DATA, so that scores are probabilities.

    Single-label: one temperature T, probs = softmax(logits / T) (labels do not change).
    Multi-label: one per label, sigmoid(logit / T), and the per-label thresholds are tuned
    again on the calibrated probabilities (labels may change). Prints the expected
    calibration error and NLL before and after. Exports of MODEL are then stale: export again.
    """
    from clsx.evaluation.calibrate import calibrate
    from clsx.quality.metrics import format_calibration

    result = calibrate(CalibrateConfig(**given(options)), log=echo_err)
    click.echo(format_calibration(result.before, result.after, ("before", "after")))
    echo_decisions(result.manifest, f"{result.rows} rows of {options['data']}")
    click.echo(f"Wrote {result.output / 'clsx.json'}")

