"""Export stages: a merged model directory turned into another runnable format.

Light on purpose (no torch import): the CLI reads the format names and the gates' defaults
from here, and :func:`run` imports an exporter only when one runs.
"""

from clsx.export.config import (
    EXPORT_FORMATS,
    FP32_TOLERANCE,
    INT8_MIN_AGREEMENT,
    VLLM_DTYPE,
    VLLM_DTYPES,
    ExportConfig,
)
from clsx.export.dispatch import run

__all__ = ["EXPORT_FORMATS", "FP32_TOLERANCE", "INT8_MIN_AGREEMENT", "VLLM_DTYPE", "VLLM_DTYPES",
           "ExportConfig", "run"]
