"""``clsx export --format onnx|onnx-int8|tensorrt``: torch.onnx.export (dynamo) plus a
parity gate.

A ``tensorrt`` export is the fp32 graph of an ``onnx`` one, run by the TensorRT provider
(:mod:`clsx.inference.runners.tensorrt`). Where TensorRT is installed, the export builds the engine
and gates it on parity too; elsewhere, the engine is built on first use on the GPU machine.

optimum-onnx is not used: it pins transformers 4.57, which cannot live beside vLLM's
transformers 5. The exporter in torch has no such pin.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from clsx.artifacts.artifact import ONNX_FILE, Artifact
from clsx.errors import ClsxError
from clsx.export import FP32_TOLERANCE, INT8_MIN_AGREEMENT
from clsx.export.common import (
    ExportResult,
    export_manifest,
    open_export,
    open_torch_artifact,
    write_tokenizer_and_config,
)
from clsx.export.fusion import FULL, INT8, fuse_for_ort
from clsx.export.quantize import quantize_gated
from clsx.inference.classifier import Classifier
from clsx.inference.encoding import EncodedWindow
from clsx.inference.runners import RunnerOptions
from clsx.inference.runners.tensorrt import tensorrt_available
from clsx.inference.scheduler import pad
from clsx.inference.torch_model import LogitsOnly
from clsx.io.staging import staged_directory
from clsx.quality import MAX_LABEL_CHANGES
from clsx.quality.parity import ParityReport, compare, dtype_gate_failure, parity_inputs

# Protobuf cannot hold more than 2 GiB; larger models keep weights in model.onnx.data.
EXTERNAL_DATA_BYTES = 1 << 30
# An int8 export stages its fp32 graph here, as an artifact of its own, until it is gated.
FP32_STAGE = "fp32"
# The exporter's own (unfused) graph, kept until the fused one passed the parity gate.
UNFUSED_STAGE = "unfused"
CPU = RunnerOptions(device="cpu")


def export_onnx(
    model_dir: Path | Artifact,
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
    """Export a torch artifact (its directory, or the :class:`Artifact` already opened) as
    ``fmt`` (``onnx``, ``onnx-int8`` or ``tensorrt``), gated on parity.

    ``onnx`` and ``onnx-int8`` graphs carry ONNX Runtime's transformer fusions unless
    ``fuse`` is False (:mod:`clsx.export.fusion`; the manifest's ``fusions`` lists them;
    int8 graphs get the int8 set, which keeps Q/K/V projections quantizable).
    The fp32 graph must reproduce the PyTorch logits within ``tolerance`` on a mixed-length
    batch (a fused graph that misses it is replaced by the unfused one, which must meet it).
    int8 must agree with fp32 on the labels users get (the model's thresholds for
    multi-label) on at least ``min_agreement`` of the calibration texts (or, without them,
    of the parity batch; decoders need calibration texts, checked first). A TensorRT
    engine, where one can be built here, must pass the dtype gate (probabilities within the
    fp16 tolerance, every label equal).
    Every candidate is checked as users run it: an artifact directory opened by
    :class:`~clsx.inference.classifier.Classifier`. Nothing is left at ``output`` on failure.
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
        graph.export(module, fuse=fuse and fmt != "tensorrt", tolerance=tolerance,
                     fusion_set=INT8 if int8 else FULL)
        del module
        parity, notes = graph.parity, graph.notes
        manifest = export_manifest(artifact, output, fmt, parity, graph.fusions)
        if int8:  # the fp32 graph's directory (stage/fp32) has them; stage needs its own
            write_tokenizer_and_config(artifact, stage)
        manifest.save(stage)
        with graph.classifier as fp32:
            if int8:
                int8_parity, int8_notes, cut = quantize_gated(
                    fp32, graph.probe_logits, stage, probe, calibration_texts, min_agreement)
                parity.update(int8_parity)
                notes += int8_notes
        if int8:
            shutil.rmtree(graph.directory)
            manifest = export_manifest(artifact, output, fmt, parity, graph.fusions, cut)
            manifest.save(stage)
            if cut is not None:
                notes.append(f"re-check: {cut.describe(MAX_LABEL_CHANGES)}")
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

    def export(self, module: LogitsOnly, fuse: bool, tolerance: float,
               fusion_set: str = FULL) -> None:
        """Export ``module``, fuse it (``fusion_set``) when ``fuse``, and open the graph that
        passes the ``tolerance`` gate (the unfused one when fusing broke parity); raise if
        none does."""
        self.directory.mkdir(exist_ok=True)
        write_tokenizer_and_config(self.parent, self.directory)
        unfused = self.directory / UNFUSED_STAGE
        unfused.mkdir()
        input_ids, attention_mask = pad(self.probe.ids, self.parent.manifest.padding_id)
        _export_graph(module, unfused / ONNX_FILE, (input_ids[:2], attention_mask[:2]))
        if fuse:
            self._fuse(unfused, fusion_set)
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

    def _fuse(self, unfused: Path, fusion_set: str) -> None:
        """Fused graph into ``directory``; on a rewriter failure, a note and no fusions."""
        try:
            self.fusions = fuse_for_ort(unfused / ONNX_FILE, self.directory / ONNX_FILE,
                                        fusion_set)
        except Exception as exc:  # the rewriter raises many internal error types
            self.notes.append(f"ONNX Runtime fusions failed ({str(exc).splitlines()[0]}); "
                              "exported the unfused graph")

    def _open(self) -> None:
        export_manifest(self.parent, self.output, "onnx", {}, self.fusions).save(self.directory)
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


def _check_tensorrt(stage: Path, reference: np.ndarray, probe: EncodedWindow) -> ParityReport:
    """Build the fp16 engine into the export's cache and gate it against PyTorch fp32 with
    the dtype gate (:func:`~clsx.quality.parity.dtype_gate_failure`)."""
    with open_export(stage, "tensorrt", RunnerOptions(device="cuda")) as engine:
        report = compare(reference, engine.predict_encoded(probe).logits, engine.rule)
        dtype = engine.runner.dtype
    failure = dtype_gate_failure(dtype, report)
    if failure is not None:
        raise ClsxError(f"the TensorRT {dtype} engine's {failure}; not exporting")
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
