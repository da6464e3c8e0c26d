"""``clsx export --format onnx|onnx-int8|tensorrt``: torch.onnx.export (dynamo) plus a
parity gate.

A ``tensorrt`` export is the fp32 graph of an ``onnx`` one, run by the TensorRT provider
(:mod:`clsx.runners.tensorrt`). Where TensorRT is installed, the export builds the engine
and gates it on parity too; elsewhere, the engine is built on first use on the GPU machine.

optimum-onnx is not used: it pins transformers 4.57, which cannot live beside vLLM's
transformers 5. The exporter in torch has no such pin.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from clsx.artifact import ONNX_FILE, Artifact
from clsx.classifier import Classifier
from clsx.encoding import EncodedWindow
from clsx.errors import ClsxError
from clsx.export import FP32_TOLERANCE, INT8_MIN_AGREEMENT
from clsx.export.common import ExportResult, export_manifest, open_export, open_torch_artifact
from clsx.export.fusion import fuse_for_ort
from clsx.export.parity import PROB_TOLERANCES, ParityReport, compare, parity_inputs
from clsx.modeling import LogitsOnly
from clsx.runners import RunnerOptions
from clsx.runners.tensorrt import tensorrt_available
from clsx.scheduler import pad
from clsx.staging import staged_directory

# Protobuf cannot hold more than 2 GiB; larger models keep weights in model.onnx.data.
EXTERNAL_DATA_BYTES = 1 << 30
# An int8 export stages its fp32 graph here, as an artifact of its own, until it is gated.
FP32_STAGE = "fp32"
# The exporter's own (unfused) graph, kept until the fused one passed the parity gate.
UNFUSED_STAGE = "unfused"
CPU = RunnerOptions(device="cpu")


def export_onnx(
    model_dir: Path,
    output: Path,
    *,
    fmt: str = "onnx",
    calibration_texts: list[str] | None = None,
    tolerance: float = FP32_TOLERANCE,
    min_agreement: float = INT8_MIN_AGREEMENT,
    fuse: bool = True,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> ExportResult:
    """Export a torch artifact as ``fmt`` (``onnx``, ``onnx-int8`` or ``tensorrt``), gated
    on parity.

    ``onnx`` and ``onnx-int8`` graphs carry ONNX Runtime's transformer fusions unless
    ``fuse`` is False (:mod:`clsx.export.fusion`; the manifest's ``fusions`` lists them).
    The fp32 graph must reproduce the PyTorch logits within ``tolerance`` on a mixed-length
    batch (a fused graph that misses it is replaced by the unfused one, which must meet it).
    int8 must agree with fp32 on the labels users get (the model's thresholds for
    multi-label) on at least ``min_agreement`` of the calibration texts (or, without them,
    of the parity batch). A TensorRT engine, where one can be built here, must keep
    probabilities within the fp16 tolerance. Every candidate is checked as users run it: an
    artifact directory opened by :class:`~clsx.classifier.Classifier`. Nothing is left at
    ``output`` on failure.
    """
    artifact = open_torch_artifact(model_dir, allow_pickle)
    int8 = fmt == "onnx-int8"
    if int8 and artifact.manifest.is_decoder and not calibration_texts:
        raise ClsxError(
            f"int8 export of a {artifact.manifest.family} (decoder) classifier needs "
            "--calibration-data: random-token parity batches have passed decoders whose int8 "
            "labels then changed on real texts; pass a few hundred texts like the ones it will "
            "classify"
        )
    probe = parity_inputs(artifact.manifest, artifact.tokenizer, rows=32)
    with Classifier.from_artifact(artifact, "torch",
                                  RunnerOptions(device="cpu", dtype="fp32")) as torch_model:
        reference = torch_model.predict_encoded(probe).logits
        module = torch_model.runner.model
    with staged_directory(output, overwrite) as stage:
        graph = _Fp32Graph(artifact, output, stage / FP32_STAGE if int8 else stage,
                           reference, probe)
        graph.export(module, fuse=fuse and fmt != "tensorrt", tolerance=tolerance)
        del module
        parity, notes = graph.parity, graph.notes
        manifest = export_manifest(artifact, output, fmt, parity, graph.fusions)
        _write_artifact(artifact, stage, manifest)
        with graph.classifier as fp32:
            if int8:
                int8_parity, int8_notes = _quantize(fp32, graph.probe_logits, stage, probe,
                                                    calibration_texts, min_agreement)
                parity.update(int8_parity)
                notes += int8_notes
        if int8:
            shutil.rmtree(graph.directory)
            manifest = export_manifest(artifact, output, fmt, parity, graph.fusions)
            manifest.save(stage)
        if fmt == "tensorrt" and tensorrt_available():
            parity["tensorrt"] = _check_tensorrt(stage, reference, probe)
            manifest = export_manifest(artifact, output, fmt, parity, graph.fusions)
            manifest.save(stage)
    return ExportResult(output=output, manifest=manifest, parity=parity, notes=tuple(notes))


class _Fp32Graph:
    """The fp32 ONNX graph of an export, staged in ``directory`` as an artifact of its own
    and gated on parity with the PyTorch ``reference`` logits on ``probe``."""

    def __init__(self, parent: Artifact, output: Path, directory: Path,
                 reference: np.ndarray, probe: EncodedWindow) -> None:
        self.parent, self.output, self.directory = parent, output, directory
        self.reference, self.probe = reference, probe
        self.fusions: dict[str, int] | None = None
        self.notes: list[str] = []
        self.classifier: Classifier | None = None
        self.probe_logits: np.ndarray | None = None
        self.parity: dict[str, ParityReport] = {}

    def export(self, module: LogitsOnly, fuse: bool, tolerance: float) -> None:
        """Export ``module``, fuse it when ``fuse``, and open the graph that passes the
        ``tolerance`` gate (the unfused one when fusing broke parity); raise if none does."""
        self.directory.mkdir(exist_ok=True)
        unfused = self.directory / UNFUSED_STAGE
        unfused.mkdir()
        input_ids, attention_mask = pad(self.probe.ids, self.parent.manifest.padding_id)
        _export_graph(module, unfused / ONNX_FILE, (input_ids[:2], attention_mask[:2]))
        if fuse:
            self._fuse(unfused)
        if self.fusions is None:
            _move_graph(unfused, self.directory)
        self._open()
        if self.fusions is not None and self._difference() > tolerance:
            self.notes.append(f"ONNX Runtime's fusions moved the logits by "
                              f"{self._difference():.2e} (> {tolerance:.0e}); exported the "
                              "unfused graph")
            self.classifier.close()
            self.fusions = None
            _move_graph(unfused, self.directory)
            self._open()
        shutil.rmtree(unfused)
        if self._difference() > tolerance:
            self.classifier.close()
            raise ClsxError(
                f"the ONNX graph differs from PyTorch by {self._difference():.2e} "
                f"(> {tolerance:.0e}) on the parity batch; not exporting"
            )

    def _fuse(self, unfused: Path) -> None:
        """Fused graph into ``directory``; on a rewriter failure, a note and no fusions."""
        try:
            self.fusions = fuse_for_ort(unfused / ONNX_FILE, self.directory / ONNX_FILE)
        except Exception as exc:  # the rewriter raises many internal error types
            self.notes.append(f"ONNX Runtime fusions failed ({str(exc).splitlines()[0]}); "
                              "exported the unfused graph")

    def _open(self) -> None:
        _write_artifact(self.parent, self.directory,
                        export_manifest(self.parent, self.output, "onnx", {}, self.fusions))
        self.classifier = open_export(self.directory, "onnx", CPU)
        self.probe_logits = self.classifier.predict_encoded(self.probe).logits
        self.parity = {"fp32": compare(self.reference, self.probe_logits,
                                       self.classifier.rule)}

    def _difference(self) -> float:
        return self.parity["fp32"].max_abs_diff


def _move_graph(source: Path, directory: Path) -> None:
    """Move the graph files (``model.onnx`` and any external data) of ``source`` into
    ``directory``, replacing what is there."""
    for path in source.iterdir():
        os.replace(path, directory / path.name)


def _write_artifact(parent: Artifact, directory: Path, manifest) -> None:
    """Tokenizer, config and manifest beside a graph: the files that make it an artifact."""
    parent.tokenizer.save_pretrained(directory)
    shutil.copy2(parent.path / "config.json", directory / "config.json")
    manifest.save(directory)


def _check_tensorrt(stage: Path, reference: np.ndarray, probe: EncodedWindow) -> ParityReport:
    """Build the fp16 engine into the export's cache and compare it with PyTorch fp32."""
    engine = open_export(stage, "tensorrt", RunnerOptions(device="cuda"))
    report = compare(reference, engine.predict_encoded(probe).logits, engine.rule)
    tolerance = PROB_TOLERANCES[engine.runner.dtype]
    if report.max_prob_diff > tolerance:
        raise ClsxError(
            f"the TensorRT {engine.runner.dtype} engine differs from PyTorch fp32 by "
            f"{report.max_prob_diff:.2e} in probability (> {tolerance:.0e}); not exporting"
        )
    return report


def _export_graph(module: LogitsOnly, path: Path, sample: tuple[np.ndarray, np.ndarray]
                  ) -> None:
    """Trace ``sample`` (a padded batch) with dynamic batch and sequence axes; keep the
    exporter's chatter off stdout."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    sample = tuple(torch.from_numpy(array) for array in sample)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        exporter_log.setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                module, sample, str(path), dynamo=True, verbose=False,
                input_names=["input_ids", "attention_mask"], output_names=["logits"],
                dynamic_shapes={"input_ids": {0: batch, 1: sequence},
                                "attention_mask": {0: batch, 1: sequence}},
                external_data=size > EXTERNAL_DATA_BYTES,
            )
        except Exception as exc:  # the exporter raises many internal error types
            raise ClsxError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from exc
        finally:
            exporter_log.setLevel(level)


def _quantize(
    fp32: Classifier,
    fp32_probe: np.ndarray,
    stage: Path,
    probe: EncodedWindow,
    calibration_texts: list[str] | None,
    min_agreement: float,
) -> tuple[dict[str, ParityReport], list[str]]:
    """Dynamic int8 of ``fp32``'s graph into ``stage``, and its label agreement with fp32
    (``fp32_probe``: its logits on ``probe``); notes on what was kept fp32.

    Weights are per-channel with a 7-bit range: CPUs without VNNI (AVX2) saturate 8-bit
    products in int16, which flipped 82% of a SmolLM2 classifier's labels. When quantizing
    every weight MatMul misses ``min_agreement``, the feed-forward output projections and
    the head stay fp32 (measured on that classifier: 94.0% -> 99.4% agreement).
    """
    gated = "int8_calibration" if calibration_texts else "int8_parity_batch"
    fp32_path = fp32.artifact.path / ONNX_FILE
    expected = {"int8_parity_batch": fp32_probe}
    if calibration_texts:  # computed once, compared with every int8 plan
        expected["int8_calibration"] = fp32.predict_all(calibration_texts).logits
    reports: dict[str, ParityReport] = {}
    notes: list[str] = []
    kept = _sensitive_matmuls(fp32_path)
    for plan in ([], kept) if kept else ([],):
        quantize_dynamic_int8(fp32_path, stage / ONNX_FILE, plan)
        with open_export(stage, "onnx", CPU) as int8:
            measured = _int8_parity(fp32, int8, expected, probe, calibration_texts)
        agreement = measured[gated].label_agreement
        if agreement is None or agreement >= min_agreement:
            reports.update(measured)
            if plan:
                notes.append(f"int8: {len(plan)} feed-forward output and head MatMuls kept in "
                             f"fp32 (every MatMul in int8 agreed on only "
                             f"{reports[f'{gated}_all_matmuls'].label_agreement:.2%})")
            return reports, notes
        reports[f"{gated}_all_matmuls"] = measured[gated]
    kept_too = " even with the feed-forward outputs and head in fp32" if kept else ""
    raise ClsxError(
        f"int8 labels agree with fp32 on {agreement:.2%} of the {measured[gated].rows} "
        f"{gated.removeprefix('int8_').replace('_', ' ')} rows{kept_too} "
        f"(< {min_agreement:.2%}); keep the fp32 export or lower --min-agreement"
    )


# Module paths (from the exporter's name scopes) of the MatMuls whose int8 error flips labels
# most: the feed-forward output projections, whose inputs carry the largest activation
# outliers, and the classification head.
SENSITIVE_MODULES = re.compile(r"(mlp\.down_proj|layer\.\d+\.output\.dense|score|classifier)$")


def _sensitive_matmuls(fp32_path: Path) -> list[str]:
    """Names of the MatMul nodes of SENSITIVE_MODULES ([] if the graph lacks name scopes)."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    names = []
    for node in graph.node:
        scopes = next((p.value for p in node.metadata_props
                       if p.key == "pkg.torch.onnx.name_scopes"), None)
        if node.op_type == "MatMul" and scopes:
            module = ast.literal_eval(scopes)[-2:-1]
            if module and SENSITIVE_MODULES.search(module[0]):
                names.append(node.name)
    return names


def quantize_dynamic_int8(fp32_path: Path, int8_path: Path, fp32_nodes: list[str]) -> None:
    """ONNX Runtime's dynamic int8 of every MatMul with a constant weight but ``fp32_nodes``:
    per-channel weights in 7 bits (see ``_quantize``), activations quantized per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs an unactionable pre-processing hint
    try:
        quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True, op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=fp32_nodes)
    finally:
        root.setLevel(level)


def _int8_parity(fp32: Classifier, int8: Classifier, expected: dict[str, np.ndarray],
                 probe: EncodedWindow, calibration_texts: list[str] | None
                 ) -> dict[str, ParityReport]:
    """int8 against fp32 on the parity batch and, when given, on the calibration texts, both
    through the classifier users run (encoder, long-text setting, thresholds)."""
    reports = {"int8_parity_batch": compare(expected["int8_parity_batch"],
                                            int8.predict_encoded(probe).logits, fp32.rule)}
    if calibration_texts:
        reports["int8_calibration"] = compare(expected["int8_calibration"],
                                              int8.predict_all(calibration_texts).logits,
                                              fp32.rule)
    return reports
