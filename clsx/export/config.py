"""The options of ``clsx export``, each with its one default, checked before any work.

Light on purpose (no torch import): ``--help`` reads the format names and gate defaults here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clsx.errors import ClsxError

EXPORT_FORMATS = ("onnx", "onnx-int8", "openvino", "openvino-int8", "vllm", "tensorrt")
ONNX_FORMATS = ("onnx", "onnx-int8")  # the formats whose graph ONNX Runtime's fusions apply to
INT8_FORMATS = ("onnx-int8", "openvino-int8")  # gated on label agreement, calibrated
# The export gates' defaults (the CLI shows them in --help and passes only what is given).
FP32_TOLERANCE = 1e-4  # max |logit difference| of the fp32 ONNX graph from PyTorch
INT8_MIN_AGREEMENT = 0.98  # min share of int8 labels equal to fp32's
VLLM_DTYPES = ("bf16", "fp32")  # dtypes a vllm export's weights may be saved in
VLLM_DTYPE = "bf16"  # dtype of a vllm export's weights
# --calibration-data: the column its texts are read from, and how many rows are compared.
CALIBRATION_TEXT_COLUMN = "text"
CALIBRATION_ROWS = 2000


@dataclass(frozen=True)
class ExportConfig:
    """Every option of ``clsx export``: ``model_dir`` exported as ``format`` to ``output``.

    A field that applies to some formats only (``dtype``: vllm; ``check``: vllm's parity
    load; ``fuse``: onnx and onnx-int8; ``calibration_data`` and ``min_agreement``:
    onnx-int8 and openvino-int8) or only with another (``text_column``, ``calibration_rows`` and
    ``storage_options`` read ``calibration_data``; ``tolerance`` needs the parity check) is
    refused where it would do nothing. None is the format's default.
    """

    model_dir: Path
    output: Path
    format: str = "onnx"
    dtype: str | None = None
    check: bool = True
    calibration_data: str | None = None
    text_column: str | None = None
    calibration_rows: int | None = None
    tolerance: float | None = None
    min_agreement: float | None = None
    fuse: bool = True
    overwrite: bool = False
    allow_pickle: bool = False
    storage_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ClsxError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, "
                            f"got {self.format!r}")
        if self.calibration_data is not None and self.format not in INT8_FORMATS:
            raise ClsxError("--calibration-data applies to --format onnx-int8 and "
                            "openvino-int8 only")
        if not self.fuse and self.format not in ONNX_FORMATS:
            raise ClsxError("--no-fusion applies to --format onnx and onnx-int8 only")
        if not self.check and self.format != "vllm":
            raise ClsxError("--no-parity applies to --format vllm only; ONNX exports are always "
                            "checked")
        if self.dtype is not None and self.format != "vllm":
            raise ClsxError(f"--dtype applies to --format vllm only, not to {self.format}")
        if self.min_agreement is not None and self.format not in INT8_FORMATS:
            raise ClsxError(f"--min-agreement applies to --format onnx-int8 and openvino-int8 "
                            f"only, not to {self.format}")
        if self.tolerance is not None and not self.check:
            raise ClsxError("--tolerance does nothing with --no-parity, which skips the "
                            "comparison it bounds")
        reading = {"--text-column": self.text_column, "--calibration-rows": self.calibration_rows,
                   "--storage-option": self.storage_options or None}
        for flag, value in reading.items():
            if value is not None and self.calibration_data is None:
                raise ClsxError(f"{flag} applies with --calibration-data only (it says how to "
                                "read that file)")
        if self.calibration_rows is not None and self.calibration_rows < 1:
            raise ClsxError(f"--calibration-rows must be >= 1, got {self.calibration_rows}")

    def calibration_texts(self) -> list[str] | None:
        """The texts of ``calibration_data`` (its first ``calibration_rows`` rows, nulls
        dropped) that int8 labels must agree on; None without calibration data."""
        if self.calibration_data is None:
            return None
        from clsx.io.tables import read_texts

        texts = read_texts(self.calibration_data, self.text_column or CALIBRATION_TEXT_COLUMN,
                           self.calibration_rows or CALIBRATION_ROWS, self.storage_options)
        return [text for text in texts if text is not None]
