"""``clsx export``'s one entry point: an :class:`ExportConfig` to the exporter of its format.

Light on purpose: the exporters (onnx, openvino, vllm) are imported only when one runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clsx.artifacts.manifest import Manifest
from clsx.errors import ClsxError
from clsx.export.config import VLLM_DTYPE, ExportConfig
from clsx.io.outputs import check_output_directory

if TYPE_CHECKING:
    from clsx.export.common import ExportResult


def run(config: ExportConfig) -> ExportResult:
    """Export ``config.model_dir`` as ``config.format`` to ``config.output``, gated on parity
    with PyTorch fp32; nothing is left at the output on failure.

    The output is checked before the model loads (an existing one needs ``overwrite``), and
    the calibration texts are read before it too.
    """
    check_output_directory(config.output, config.overwrite)
    source = Manifest.load(config.model_dir) if Path(config.model_dir).is_dir() else None
    if source is not None and source.format == "static":
        if config.format != "onnx":
            raise ClsxError(f"{config.model_dir} is a static model, which exports to onnx "
                            f"only (a small graph of its vectors and head), not {config.format}")
        from clsx.export.static_onnx import export_static_onnx

        return export_static_onnx(config.model_dir, config.output, overwrite=config.overwrite,
                                  **({} if config.tolerance is None
                                     else {"tolerance": config.tolerance}))
    if config.format == "vllm":
        from clsx.export.vllm import export_vllm

        return export_vllm(config.model_dir, config.output, dtype=config.dtype or VLLM_DTYPE,
                           tolerance=config.tolerance, check=config.check,
                           overwrite=config.overwrite, allow_pickle=config.allow_pickle)
    # The gates given (None: the exporter's default; min_agreement is int8's only).
    given = {"tolerance": config.tolerance, "min_agreement": config.min_agreement}
    gates = {name: value for name, value in given.items() if value is not None}
    if config.format.startswith("openvino"):
        from clsx.export.openvino import export_openvino

        return export_openvino(config.model_dir, config.output, fmt=config.format,
                               calibration_texts=config.calibration_texts(),
                               overwrite=config.overwrite, allow_pickle=config.allow_pickle,
                               **gates)
    from clsx.export.onnx import export_onnx

    return export_onnx(config.model_dir, config.output, fmt=config.format,
                       calibration_texts=config.calibration_texts(), fuse=config.fuse,
                       overwrite=config.overwrite, allow_pickle=config.allow_pickle, **gates)
