"""``clsx export``: flags -> :class:`~clsx.export.ExportConfig` -> :func:`clsx.export.run`."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from clsx.cli.console import echo_err
from clsx.cli.options import allow_pickle_option, storage_option
from clsx.export import (
    EXPORT_FORMATS,
    FP32_TOLERANCE,
    INT8_MIN_AGREEMENT,
    VLLM_DTYPE,
    VLLM_DTYPES,
    ExportConfig,
    run,
)
from clsx.export.config import CALIBRATION_ROWS, CALIBRATION_TEXT_COLUMN

DEFAULT = ParameterSource.DEFAULT


@click.command("export")
@click.argument("model_dir")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="onnx",
              show_default=True, help="onnx: fp32 graph; onnx-int8: dynamic int8 weights; "
                                      "openvino: the model converted to OpenVINO IR, fp32 "
                                      "weights (needs clsx[openvino]); openvino-int8: that "
                                      "IR quantized by nncf on --calibration-data, with its "
                                      "fp32 IR kept for the re-check; "
                                      "vllm: a directory vLLM's pooling runner loads; "
                                      "tensorrt: the fp32 graph, run as an fp16 TensorRT "
                                      "engine on NVIDIA GPUs.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Directory to create (model.onnx, model.xml or weights, tokenizer, config, "
                   "clsx.json).")
@click.option("--dtype", type=click.Choice(VLLM_DTYPES),
              help=f"vllm only: dtype of the saved weights.  [default: {VLLM_DTYPE}]")
@click.option("--no-parity", is_flag=True,
              help="vllm only: skip loading the export in vLLM to check it (e.g. where vLLM "
                   "is not installed).")
@click.option("--calibration-data",
              help="Parquet/CSV/JSONL sample whose int8 labels must agree with fp32 (a path "
                   "or an s3://, gs://... URI); required for openvino-int8 (its activation "
                   "ranges come from it) and for decoder (Qwen2, Llama) onnx-int8.")
@click.option("--text-column", default=CALIBRATION_TEXT_COLUMN, show_default=True,
              help="Text column of --calibration-data.")
@click.option("--calibration-rows", type=click.IntRange(min=1), default=CALIBRATION_ROWS,
              show_default=True, help="Rows of --calibration-data to compare.")
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
def export_command(model_dir: str, fmt: str, output: Path, dtype: str | None, no_parity: bool,
                   calibration_data: str | None, text_column: str, calibration_rows: int,
                   tolerance: float | None, min_agreement: float | None, no_fusion: bool,
                   overwrite: bool, allow_pickle: bool, storage_options: tuple[str, ...]
                   ) -> None:
    """Export a merged model directory (or its URI on object storage, fetched once into the
    clsx cache) to ONNX, OpenVINO or for vLLM, checked against PyTorch.

    The export is written only if it matches PyTorch fp32 within --tolerance on a batch of
    mixed lengths (1..max_length); the figures go into OUTPUT/clsx.json.
    """
    # Shown in --help with their defaults, but given only when typed: without
    # --calibration-data they would do nothing, and ExportConfig refuses them then.
    from clsx.artifacts.remote import local_model

    typed = click.get_current_context().get_parameter_source
    model = local_model(model_dir, storage_options, echo_err)
    config = ExportConfig(model, output, format=fmt, dtype=dtype, check=not no_parity,
                          calibration_data=calibration_data,
                          text_column=None if typed("text_column") is DEFAULT else text_column,
                          calibration_rows=(None if typed("calibration_rows") is DEFAULT
                                            else calibration_rows), tolerance=tolerance,
                          min_agreement=min_agreement, fuse=not no_fusion, overwrite=overwrite,
                          allow_pickle=allow_pickle, storage_options=storage_options)
    echo_err(f"Exporting {model_dir} to {fmt} ...")
    result = run(config)
    for name, report in result.parity.items():
        agreement = "n/a" if report.label_agreement is None else f"{report.label_agreement:.2%}"
        if report.per_label_agreement is not None:
            agreement += f" of label sets, {report.per_label_agreement:.2%} of labels"
        echo_err(f"parity {name}: {report.rows} rows, max |logit diff| "
                 f"{report.max_abs_diff:.2e}, max |prob diff| {report.max_prob_diff:.2e}, "
                 f"label agreement {agreement}")
    if result.manifest.fusions:
        fused = ", ".join(f"{name} x{count}" for name, count in result.manifest.fusions.items())
        echo_err(f"ONNX Runtime fusions: {fused}")
    for note in result.notes:
        echo_err(note)
    if not result.parity:
        echo_err("parity: not checked (--no-parity)")
    if fmt == "tensorrt" and "tensorrt" not in result.parity:
        echo_err("TensorRT is not installed here: the engine is built (and cached in the "
                 "export) on first use on a GPU machine")
    click.echo(f"Wrote {output}")
