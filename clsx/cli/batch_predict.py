"""``clsx batch-predict``: flags -> :class:`~clsx.batch.config.BatchPredictConfig` ->
:func:`clsx.batch.run.run_batch_predict` on the engine asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from clsx.batch.config import ENGINES, OUTPUT_FORMATS, BatchPredictConfig, RayOptions
from clsx.cli.console import ProgressBar, echo_err
from clsx.cli.options import (
    allow_pickle_option,
    comma_list,
    given,
    long_text_options,
    storage_option,
    threshold_option,
    with_default,
)
from clsx.inference.runners import BACKENDS
from clsx.inference.runners.base import DEVICES, DTYPES


def _batch_predict_options(command):
    """The options of ``batch-predict``; each default is the BatchPredictConfig field's (or
    RayOptions' for the Ray options)."""
    def default(name: str, help_text: str = "", config: type = BatchPredictConfig
                ) -> dict[str, Any]:
        return with_default(config, name, help_text)

    options = [
        click.option("--model", "-m", required=True,
                     help="Model directory: merged PyTorch checkpoint or a clsx export; or its "
                          "URI on object storage (s3://, gs://, ...), fetched once per machine "
                          "(each Ray node) into the clsx cache."),
        click.option("--backend", type=click.Choice(BACKENDS), **default("backend",
                     "auto runs the model directory's own format (a PyTorch model in the "
                          "fastest dtype that keeps its labels here; on CPU, for big jobs, "
                          "the fastest of torch, onnx, onnx-int8 and openvino(-int8): see "
                          "--auto-formats).")),
        click.option("--auto-formats/--no-auto-formats", default=None,
                     help="With --backend auto, a PyTorch model and the CPU: export the model "
                          "once to onnx and onnx-int8, and to openvino and openvino-int8 where "
                          "clsx[openvino] is installed (gated as clsx export gates them, int8 "
                          "on IN's first 500 texts; cached), time each format and torch on "
                          "IN's first 256 texts, and run the fastest that passed its gate (a "
                          "less exact one only when 10% faster). The choice is remembered per "
                          "model and machine.  [default: on for IN of 20,000 rows or more]"),
        click.option("--text-column", **default("text_column")),
        click.option("--keep-columns", callback=comma_list,
                     help="Comma-separated input columns to copy to OUT  [default: all]"),
        click.option("--output-prefix", **default("output_prefix",
                     "Prefix for the prediction columns (label, score, probs, ...).")),
        click.option("--batch-tokens", type=click.IntRange(min=1),
                     help="Padded tokens per model call  [default: the backend's; 8192 for "
                          "torch and onnx, 4096 for openvino]"),
        click.option("--window-rows", type=click.IntRange(min=1), **default("window_rows",
                     "Rows tokenised and length-sorted together; bounds memory.")),
        click.option("--max-length", type=click.IntRange(min=1),
                     help="Tokens per model input  [default: the model's, from clsx.json]"),
        long_text_options(training=False),
        click.option("--windows-column", is_flag=True,
                     help="Add a 'windows' column: model inputs per row (>1 only with "
                          "--long-text window; 0 for a null text)."),
        threshold_option,
        click.option("--device", type=click.Choice(DEVICES), **default("device")),
        click.option("--threads", type=click.IntRange(min=1),
                     help="Compute threads per model replica  [default: one per physical core; "
                          "with --engine ray, 1 per actor]"),
        click.option("--dtype", type=click.Choice(DTYPES),
                     help="torch, vllm, openvino and tensorrt backends: compute dtype. Default "
                          "for torch: "
                          "fp32, or with --backend auto the fastest dtype whose probabilities "
                          "stay within 5e-2 of fp32 and whose labels agree on this machine "
                          "(bf16 where the CPU has AMX / AVX-512 BF16, or on a GPU); for vllm: "
                          "the weights' dtype; for openvino: fp32 (bf16 needs AMX / AVX-512 "
                          "BF16; on an openvino-int8 export, the ops left outside int8); for "
                          "tensorrt: the engine's (fp16 unless fp32). fp16 needs a GPU."),
        click.option("--recheck/--no-recheck", default=None,
                     help="Re-score in fp32 the rows a lower-precision run (bf16, fp16, "
                          "onnx-int8, openvino-int8) is unsure of, so that they get fp32's "
                          "labels; "
                          "the cut is measured beside fp32 on the export's calibration data "
                          "or IN's first 512 texts, and remembered.  [default: on below fp32]"),
        click.option("--max-label-changes", type=click.FloatRange(0, 1, min_open=True,
                                                                  max_open=True),
                     **default("max_label_changes",
                     "Re-check: the share of labels that may differ from fp32 that the "
                     "sample must show; the summary says when it cannot.")),
        click.option("--fallback-model", type=click.Path(path_type=Path),
                     help="A cascade: rows --model is unsure of are classified again by this "
                          "model (same labels), e.g. the teacher behind a distilled student; "
                          "the cut is chosen for --fallback-agreement on IN's first 512 "
                          "texts (a big job: up to a fiftieth of its rows, enough that "
                          "the cut sends no more rows than the agreement needs)."),
        click.option("--fallback-agreement", type=click.FloatRange(0, 1, min_open=True),
                     **default("fallback_agreement",
                     "Cascade: the share of IN's first texts on which the cascade must give "
                     "the fallback model's own decisions.")),
        click.option("--max-num-seqs", type=click.IntRange(min=1),
                     help="vllm backend: most sequences per engine step  [default: vLLM's]"),
        click.option("--max-num-batched-tokens", type=click.IntRange(min=1),
                     help="vllm backend: most tokens per engine step  [default: vLLM's]"),
        click.option("--memory-fraction", type=click.FloatRange(0, 1, min_open=True),
                     help="vllm backend: share of GPU memory vLLM may take (default 0.9); on "
                          "CPU, share of host RAM for its KV cache (default 0.05)."),
        click.option("--output-format", type=click.Choice(OUTPUT_FORMATS),
                     help="file (local engine's default): one Parquet file; dataset (Ray's "
                          "default): OUT is a directory of Parquet parts, for Spark, Ray, "
                          "DuckDB."),
        click.option("--resume", is_flag=True,
                     help="Continue a killed or interrupted run of the same command from its "
                          "saved parts; exits 0 at once when OUT is already complete."),
        click.option("--part-rows", type=click.IntRange(min=1), **default("part_rows",
                     "Rows per saved part (a part is also saved every 2 minutes).")),
        click.option("--overwrite", is_flag=True, help="Replace OUT (and any saved parts)."),
        allow_pickle_option,
        click.option("--engine", type=click.Choice(ENGINES), default="local",
                     show_default=True,
                     help="ray: classify on a pool of Ray actors (pip install 'clsx[ray]')."),
        click.option("--address", help="Ray: cluster address  [default: start a local Ray]"),
        click.option("--num-workers", type=click.IntRange(min=1),
                     **default("num_workers",
                     "Ray: model replicas (actors), each with --threads CPU threads.", RayOptions)),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0),
                     **default("gpus_per_worker",
                     "Ray: GPUs per replica (1 = one replica per GPU).", RayOptions)),
        # Ray's OUT is always in input order now; the flag stays for scripts that pass it.
        click.option("--preserve-order", is_flag=True, hidden=True),
        storage_option,
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command("batch-predict")
@click.argument("input_path", metavar="IN")
@click.argument("output", metavar="OUT")
@_batch_predict_options
def batch_predict_command(input_path: str, output: str, quiet: bool, engine: str,
                          address: str | None, num_workers: int | None,
                          gpus_per_worker: float | None, preserve_order: bool,
                          **options) -> None:
    """Classify the texts of IN (a Parquet file, directory or glob) into OUT (Parquet).

    IN and OUT are local paths or object-store URIs (s3://bucket/key, gs://, abfs://,
    hdfs://), with credentials from the environment and --storage-option settings.

    \b
    OUT holds the input columns (or --keep-columns) plus:
      label  string   the predicted label (multi-label: labels >= their threshold, comma-joined;
                      regression: null)
      labels list<string>  multi-label only: the predicted labels as a list
      score  float32  the probability of that label (multi-label: the highest; regression:
                      the predicted value)
      probs  list<float32>  softmax (single-label) or sigmoid (multi-label) per label id,
                      of the logits divided by the model's temperatures (clsx calibrate)
    Rows keep their input order. A null text keeps its row with null label/score/probs; an
    empty text is classified; texts longer than max_length are truncated and counted, or
    cut by --long-text (window: classified window by window, combined per row).

    \b
    Work is saved in parts in OUT.parts/ as it goes; if the run is killed (even kill -9),
    the same command with --resume continues where it stopped and gives the same OUT.
    OUT appears only when complete (assembled under a temporary name, then renamed).

    \b
    --engine ray classifies the same windows on a pool of Ray actors (one model each)
    and writes OUT as a directory of Parquet parts (in input order), resumable as above.
    """
    from clsx.batch.run import run_batch_predict

    config = BatchPredictConfig(input=input_path, output=output, **given(options))
    ray_options = given({"address": address, "num_workers": num_workers,
                         "gpus_per_worker": gpus_per_worker})
    ray = RayOptions(**ray_options) if ray_options or preserve_order else None
    with ProgressBar(enabled=not quiet) as progress:
        summary = run_batch_predict(config, engine, ray, None if quiet else progress,
                                    log=echo_err)
    click.echo(summary.line(), err=True)

