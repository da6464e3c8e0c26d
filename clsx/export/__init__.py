"""Exporters by format name, imported lazily: ``clsx export --format NAME``."""

from __future__ import annotations

EXPORT_FORMATS = ("onnx", "onnx-int8")
