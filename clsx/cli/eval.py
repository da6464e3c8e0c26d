"""``clsx eval``: flags -> :class:`~clsx.evaluation.config.EvalConfig` ->
:func:`clsx.evaluation.evaluate.evaluate`, then its metrics and files."""

from __future__ import annotations

from pathlib import Path

import click

from clsx.cli.console import echo_err
from clsx.cli.group import report_context
from clsx.cli.options import (
    LABEL_SEPARATOR_HELP,
    allow_pickle_option,
    given,
    local_model_of,
    long_text_options,
    model_option,
    report_option,
    storage_option,
    threshold_option,
    with_default,
)
from clsx.evaluation.config import EvalConfig
from clsx.inference.runners import BACKENDS
from clsx.inference.runners.base import DEVICES


@click.command("eval")
@model_option("Model directory: merged PyTorch checkpoint or a clsx export")
@click.option("--data", required=True,
              help="Labelled data: Parquet, JSONL or CSV (a path or an s3://, gs://... URI).")
@click.option("--text-column", **with_default(EvalConfig, "text_column"))
@click.option("--label-column", **with_default(EvalConfig, "label_column"))
@click.option("--label-separator",
              **with_default(EvalConfig, "label_separator", LABEL_SEPARATOR_HELP))
@click.option("--backend", type=click.Choice(BACKENDS), **with_default(EvalConfig, "backend"))
@threshold_option
@click.option("--tune-threshold", is_flag=True,
              help="Multi-label: pick the threshold that maximises macro-F1 on --data.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Write the metrics as JSON (flat keys: accuracy, macro_f1, ...).")
@click.option("--errors", "errors_path", type=click.Path(path_type=Path),
              help="Write misclassified rows, most confident first, to this Parquet file.")
@click.option("--predictions", "predictions_path", type=click.Path(path_type=Path),
              help="Write every row with its prediction and a 'correct' flag to this Parquet "
                   "file (e.g. for bootstrap intervals).")
@report_option("headline metrics, per-class bars, confusion matrix, calibration, the most "
               "confident errors and the model's manifest")
@click.option("--device", type=click.Choice(DEVICES), **with_default(EvalConfig, "device"))
@long_text_options(training=False)
@allow_pickle_option
@storage_option
def eval_command(json_path: Path | None, errors_path: Path | None,
                 predictions_path: Path | None, report_path: Path | None, **options) -> None:
    """Metrics, per-class report and confusion matrix of MODEL on labelled DATA."""
    from clsx.evaluation.evaluate import evaluate
    from clsx.quality.metrics import format_report
    from clsx.reports.outputs import OutputFiles, write_eval_outputs

    local_model_of(options)
    config = EvalConfig(**given(options))
    files = OutputFiles(json=json_path, errors=errors_path, predictions=predictions_path,
                        report=report_path)
    files.check()
    result = evaluate(config)
    click.echo(format_report(result.metrics))
    write_eval_outputs(result, files, report_context(), log=echo_err)
