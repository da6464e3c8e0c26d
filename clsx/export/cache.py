"""Exports made on the fly (``clsx bench``, ``--backend auto``), kept for the next run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clsx.artifacts.artifact import Artifact, fingerprint
from clsx.artifacts.manifest import Manifest
from clsx.log import Log, silent


def is_current_export(target: Path, model_fingerprint: str) -> bool:
    """Whether ``target`` holds an export made from the model whose fingerprint is
    ``model_fingerprint`` (that model as it is now)."""
    manifest = Manifest.load(target) if target.is_dir() else None
    return manifest is not None and manifest.parent_fingerprint == model_fingerprint


def cached_export(model_dir: Path | Artifact, fmt: str, target: Path, log: Log = silent,
                  **gates: Any) -> Path:
    """``target``, holding ``model_dir`` (a directory, or one already opened) exported as
    ``fmt`` (``onnx``, ``onnx-int8``, ``openvino``, ``openvino-int8`` or ``tensorrt``).

    An export already at ``target`` is reused when it was made from ``model_dir`` as it is
    now (same fingerprint); otherwise ``model_dir`` is exported there anew, through the
    export's gates. ``gates`` are the exporter's keyword arguments
    (:func:`~clsx.export.onnx.export_onnx`'s ``calibration_texts``, ``min_agreement``, ...;
    :func:`~clsx.export.openvino.export_openvino`'s ``calibration_texts``, ...). Raises the export's
    :class:`~clsx.errors.ClsxError` when a gate refuses it.
    """
    opened = isinstance(model_dir, Artifact)
    current = model_dir.fingerprint if opened else fingerprint(model_dir)
    if is_current_export(target, current):
        return target
    log(f"exporting {model_dir.path if opened else model_dir} to {fmt} in {target}")
    if fmt.startswith("openvino"):
        from clsx.export.openvino import export_openvino

        export_openvino(model_dir, target, fmt=fmt, overwrite=True, **gates)
    else:
        from clsx.export.onnx import export_onnx

        export_onnx(model_dir, target, fmt=fmt, overwrite=True, **gates)
    return target
