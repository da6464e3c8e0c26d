"""``clsx export --format openvino|openvino-int8``: the PyTorch model converted to OpenVINO IR
by ``openvino.convert_model``, gated on parity with PyTorch fp32 as OpenVINO runs it; for
``openvino-int8``, then quantized by nncf (:mod:`clsx.export.openvino_int8`) and gated on
label agreement with the fp32 IR on calibration texts, like ``onnx-int8``. The int8 export
keeps that fp32 IR in ``fp32/`` (an ``openvino`` export of the same parent) as the reference
its re-check runs.

From PyTorch rather than through clsx's ONNX graph: OpenVINO ran the converted PyTorch graph
as fast as optimum-intel's IR, 5% faster than either ONNX graph on short texts and 10%
faster than the unfused one on 512-token texts (``benchmarks/openvino_peer.py``), and the
conversion takes seconds where the ONNX exporter takes tens. The IR keeps fp32 weights
(``compress_to_fp16=False``: fp16-compressed weights would move the fp32 logits past the
gate); bf16 is a run-time choice (``--dtype bf16``).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from clsx.artifacts.artifact import FP32_REFERENCE, OPENVINO_FILE, Artifact
from clsx.errors import ClsxError
from clsx.export.common import (
    ExportResult,
    export_manifest,
    open_export,
    open_torch_artifact,
    write_tokenizer_and_config,
)
from clsx.export.config import FP32_TOLERANCE, INT8_MIN_AGREEMENT
from clsx.export.quantize import int8_refusal
from clsx.inference.classifier import Classifier
from clsx.inference.encoding import EncodedWindow
from clsx.inference.runners import RunnerOptions
from clsx.inference.runners.openvino import import_openvino
from clsx.inference.scheduler import pad
from clsx.inference.torch_model import LogitsOnly
from clsx.io.staging import staged_directory
from clsx.quality import MAX_LABEL_CHANGES
from clsx.quality.parity import ParityReport, compare, parity_inputs
from clsx.quality.recheck import RecheckCut, choose_cut

CPU_FP32 = RunnerOptions(device="cpu", dtype="fp32")


def export_openvino(model_dir: Path | Artifact, output: Path, *, fmt: str = "openvino",
                    calibration_texts: list[str] | None = None,
                    tolerance: float = FP32_TOLERANCE,
                    min_agreement: float = INT8_MIN_AGREEMENT, overwrite: bool = False,
                    allow_pickle: bool = False) -> ExportResult:
    """Convert a torch artifact (its directory, or the :class:`Artifact` already opened) to
    OpenVINO IR at ``output`` (``fmt``: ``openvino``, or ``openvino-int8``).

    OpenVINO in fp32 must reproduce the PyTorch logits within ``tolerance`` on a
    mixed-length batch, run as users run it. ``openvino-int8`` then quantizes that IR on
    ``calibration_texts`` (required), and its labels must equal the fp32 IR's on at least
    ``min_agreement`` of them; the re-check cut measured there goes into the manifest, and
    the fp32 IR into ``output/fp32`` (the re-check's reference). Nothing is left at
    ``output`` on failure.
    """
    openvino = import_openvino()
    int8 = fmt == "openvino-int8"
    if int8:
        from clsx.export.openvino_int8 import import_nncf

        import_nncf()  # refused before any work where it is missing
        if not calibration_texts:
            raise ClsxError("--format openvino-int8 needs --calibration-data: its int8 "
                            "activation ranges are set on texts like the ones it will "
                            "classify; pass a few hundred")
    artifact = open_torch_artifact(model_dir, allow_pickle)
    probe = parity_inputs(artifact.manifest, artifact.tokenizer, rows=32)
    with Classifier.from_artifact(artifact, "torch", CPU_FP32) as torch_model, \
            staged_directory(output, overwrite) as stage:
        reference = torch_model.predict_encoded(probe).logits
        fp32_stage, fp32_output = ((stage / FP32_REFERENCE, output / FP32_REFERENCE) if int8
                                   else (stage, output))
        fp32_stage.mkdir(exist_ok=True)
        _convert(openvino, torch_model.runner.model, probe, artifact.manifest.padding_id,
                 fp32_stage / OPENVINO_FILE)
        write_tokenizer_and_config(artifact, fp32_stage)
        export_manifest(artifact, fp32_output, "openvino", {}).save(fp32_stage)
        with open_export(fp32_stage, "openvino", CPU_FP32) as exported:
            parity = {"fp32": compare(reference, exported.predict_encoded(probe).logits,
                                      exported.rule)}
            if parity["fp32"].max_abs_diff > tolerance:
                raise ClsxError(f"the OpenVINO graph differs from PyTorch by "
                                f"{parity['fp32'].max_abs_diff:.2e} (> {tolerance:.0e}) on "
                                "the parity batch; not exporting")
            export_manifest(artifact, fp32_output, "openvino", parity).save(fp32_stage)
            cut, notes = None, []
            if int8:
                parity["int8_calibration"], cut, notes = _quantize_gated(
                    exported, artifact, output, stage, calibration_texts, min_agreement)
                notes.append(f"re-check: {cut.describe(MAX_LABEL_CHANGES)}")
        manifest = export_manifest(artifact, output, fmt, parity, recheck=cut)
        manifest.save(stage)
    return ExportResult(output=output, manifest=manifest, parity=parity, notes=tuple(notes))


def _quantize_gated(fp32: Classifier, parent: Artifact, output: Path, stage: Path,
                    texts: list[str], min_agreement: float
                    ) -> tuple[ParityReport, RecheckCut, list[str]]:
    """nncf int8 of ``fp32``'s IR into ``stage``, run as users run it (the default precision
    elsewhere: bf16 where native) against the fp32 IR on ``texts``, refused below
    ``min_agreement`` there; the re-check cut measured on them; notes on what was kept fp32.
    (Not on the random-token parity batch: its activations fall outside the ranges
    calibrated on real text.)

    When quantizing every MatMul misses ``min_agreement``, the feed-forward output
    projections and the head stay fp32, as for ``onnx-int8`` (SmolLM2 SST-2: 97.6% of 500
    calibration texts with every MatMul in int8).
    """
    from clsx.export.openvino_int8 import quantize_openvino, sensitive_matmuls

    graph = fp32.artifact.path / OPENVINO_FILE
    expected = fp32.predict_all(texts).logits
    write_tokenizer_and_config(parent, stage)
    export_manifest(parent, output, "openvino-int8", {}).save(stage)
    kept = sensitive_matmuls(graph)
    reports: list[ParityReport] = []
    for plan in ([], kept) if kept else ([],):
        for old in (stage / OPENVINO_FILE, (stage / OPENVINO_FILE).with_suffix(".bin")):
            old.unlink(missing_ok=True)  # a mapped earlier plan keeps its own inode
        quantize_openvino(fp32, graph, stage / OPENVINO_FILE, texts, plan)
        with open_export(stage, "openvino", RunnerOptions(device="cpu")) as int8:
            calibrated = int8.predict_all(texts).logits
        report = compare(expected, calibrated, fp32.rule)
        if report.label_agreement is None or report.label_agreement >= min_agreement:
            notes = [f"int8: {len(plan)} feed-forward output and head MatMuls kept in fp32 "
                     f"(every MatMul in int8 agreed on only {reports[0].label_agreement:.2%})"
                     ] if plan else []
            return report, choose_cut(fp32.rule, calibrated, expected), notes
        reports.append(report)
    kept_too = " even with the feed-forward outputs and head in fp32" if kept else ""
    raise int8_refusal(report, "int8_calibration", min_agreement, kept_too)


def _convert(openvino: Any, module: LogitsOnly, probe: EncodedWindow, padding_id: int,
             path: Path) -> None:
    """Trace ``module`` on two rows of ``probe`` with dynamic batch and sequence axes and
    save the IR at ``path``. The tracer's warnings (Python booleans of shapes, fixed at
    trace time) are silenced: the gate checks the graph on every length it meets."""
    sample = tuple(torch.from_numpy(array) for array in pad(probe.ids[:2], padding_id))
    dynamic = [-1, -1]
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            model = openvino.convert_model(module, example_input=sample, input=[
                ("input_ids", dynamic, openvino.Type.i64),
                ("attention_mask", dynamic, openvino.Type.i64)])
        except Exception as exc:  # the converter raises many internal error types
            raise ClsxError(f"OpenVINO cannot convert the model: "
                            f"{str(exc).splitlines()[0]}") from exc
    openvino.save_model(model, str(path), compress_to_fp16=False)
