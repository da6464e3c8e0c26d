"""``clsx bench``: flags -> :class:`~clsx.evaluation.config.BenchConfig` ->
:func:`clsx.evaluation.bench.run_bench`, then its table and files."""

from __future__ import annotations

from pathlib import Path

import click

from clsx.cli.console import echo_err
from clsx.cli.group import report_context
from clsx.cli.options import (
    comma_list,
    given,
    local_model_of,
    model_option,
    report_option,
    with_default,
)
from clsx.evaluation.config import VARIANTS, BenchConfig
from clsx.inference.runners.base import DEVICES


@click.command("bench")
@model_option("Merged PyTorch model directory (the fp32 reference)")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Parquet, CSV or JSONL file with a text column.")
@click.option("--text-column", **with_default(BenchConfig, "text_column"))
@click.option("--rows", type=click.IntRange(min=1),
              **with_default(BenchConfig, "rows", "Rows of --data to run through each backend."))
@click.option("--backends", callback=comma_list,
              **with_default(BenchConfig, "backends", f"Comma-separated: {', '.join(VARIANTS)} "
                               "(torch-bf16 is fast only on CPUs with AMX "
                               "or AVX-512 BF16, and on GPUs; openvino-bf16 needs them; "
                               "openvino(-int8) needs clsx[openvino]; tensorrt needs an "
                               "NVIDIA GPU "
                               "with TensorRT)."))
@click.option("--exports-dir", type=click.Path(path_type=Path),
              help="Keep (and reuse) the ONNX exports here instead of a temporary directory.")
@click.option("--batch-tokens", type=click.IntRange(min=1),
              help="Padded tokens per model call  [default: each backend's]")
@click.option("--device", type=click.Choice(DEVICES),
              **with_default(BenchConfig, "device", "Where every backend runs, the torch fp32 "
                             "reference included (auto: the GPU when there is one)."))
@click.option("--threads", type=click.IntRange(min=1),
              help="Compute threads  [default: one per physical core]")
@click.option("--recheck/--no-recheck", default=True, show_default=True,
              help="Beside each backend below fp32 (torch-bf16, onnx-int8, openvino-bf16, "
                   "openvino-int8, tensorrt), a row 'X + re-check': the same run re-scoring "
                   "in fp32 (the same engine for a dtype change and openvino-int8, torch for "
                   "another export) the rows under the "
                   "cut chosen on the first 512 rows (as batch-predict re-checks).")
@click.option("--compare-model", "compare_models", multiple=True,
              type=click.Path(path_type=Path),
              help="Another model with the same labels (a student, a static model, an export) "
                   "to run on the same rows after the backends, in its own format with "
                   "--backend auto; its agreement is with the model's torch fp32 labels. "
                   "Repeatable.")
@click.option("--cascade-agreement", type=click.FloatRange(0, 1, min_open=True),
              help="Also run each --compare-model as a cascade's first model that sends its "
                   "unsure rows to this model (both --backend auto), at the cut that keeps "
                   "this share of this model's labels on the first rows, as "
                   "batch-predict --fallback-model --fallback-agreement chooses it "
                   "(e.g. 0.99).")
@click.option("--label-column",
              help="A column of --data with gold labels (multi-label: comma-separated): "
                   "adds each row's accuracy, and the report plots accuracy against rows/s.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the results as JSON to this file.")
@report_option("rows/s and tokens/s bars, agreement and max |logit diff| versus torch fp32, "
               "peak RSS, the machine and this command")
def bench_command(json_path: Path | None, report_path: Path | None, **options) -> None:
    """Throughput of each backend on the same rows, against PyTorch fp32.

    Prints rows/s, tokens/s, peak RSS, label agreement and max |logit diff| versus the
    torch fp32 baseline, which always runs first.
    """
    from clsx.evaluation.bench import format_table, run_bench
    from clsx.reports.outputs import OutputFiles, write_bench_outputs

    local_model_of(options)
    config = BenchConfig(**given(options))
    files = OutputFiles(json=json_path, report=report_path)
    files.check()
    results = run_bench(config, log=echo_err)
    click.echo(format_table(results))
    write_bench_outputs(results, config, files, report_context(), log=echo_err)
