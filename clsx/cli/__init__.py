"""The ``clsx`` command line. Thin: options -> a config -> one library call -> a summary.

One module per command (``clsx/cli/<command>.py``); the options several commands share are
in :mod:`clsx.cli.options`, the group that turns errors into one line in
:mod:`clsx.cli.group`. Heavy libraries (torch, transformers, onnxruntime, pyarrow) are
imported inside the commands, so ``clsx --help`` stays fast.
"""

from __future__ import annotations

import click

from clsx import __version__
from clsx.cli.batch_predict import batch_predict_command
from clsx.cli.bench import bench_command
from clsx.cli.calibrate import calibrate_command
from clsx.cli.distill import distill_command
from clsx.cli.eval import eval_command
from clsx.cli.export import export_command
from clsx.cli.group import ClsxGroup
from clsx.cli.models import models_command
from clsx.cli.sweep import sweep_command
from clsx.cli.train import train_command

COMMANDS = (export_command, batch_predict_command, bench_command, train_command,
            distill_command, sweep_command, calibrate_command, eval_command, models_command)


@click.group(cls=ClsxGroup, context_settings={"help_option_names": ["-h", "--help"]},
             commands=COMMANDS)
@click.version_option(__version__, prog_name="clsx")
def main() -> None:
    """Fine-tuned text classifiers (Qwen2/Qwen3, Llama, BERT) as fast batch inference.

    \b
    Typical flow:
      clsx export MODEL_DIR --format onnx --output MODEL_DIR-onnx
      clsx batch-predict in.parquet out.parquet --model MODEL_DIR-onnx
      clsx bench --model MODEL_DIR --data sample.parquet
    """
