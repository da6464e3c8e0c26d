"""The options of ``clsx eval``, ``calibrate`` and ``bench``, each with its one default.

Light on purpose (no pyarrow, no torch): ``--help`` reads the defaults from here, and the CLI
passes only the options a user gave (a flag left out is a field left at its default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clsx.errors import ClsxError
from clsx.inference.runners.base import RunnerOptions

# What `clsx bench --backends` takes: each variant runs the model directory itself (export
# format None) or its export in that format, with the backend the format names (``auto``),
# in a dtype (None: the export's own).
VARIANT_RUNS: dict[str, tuple[str | None, str | None]] = {
    "torch": (None, "fp32"), "torch-bf16": (None, "bf16"),
    "onnx": ("onnx", None), "onnx-int8": ("onnx-int8", None),
    "openvino": ("openvino", "fp32"), "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8": ("openvino-int8", None),
    "tensorrt": ("tensorrt", None),
}
VARIANTS = tuple(VARIANT_RUNS)


class LongTextOverride:
    """For configs with ``long_text``, ``window_stride`` and ``aggregate`` fields: the
    command-line override of the model's long-text setting."""

    long_text: str | None
    window_stride: int | None
    aggregate: str | None

    def long_text_override(self) -> dict[str, Any]:
        """The long-text fields given on the command line (None: the manifest's)."""
        return {"strategy": self.long_text, "stride": self.window_stride,
                "aggregate": self.aggregate}


@dataclass(frozen=True)
class EvalConfig(LongTextOverride):
    """Every option of ``clsx eval``.

    ``threshold`` None is the model's tuned per-label thresholds (else 0.5); with
    ``tune_threshold`` the one threshold that maximises macro-F1 on ``data`` is used instead.
    ``long_text``, ``window_stride`` and ``aggregate`` None keep the model's setting.
    """

    model: Path
    data: str | Path
    text_column: str = "text"
    label_column: str = "label"
    label_separator: str = ","
    backend: str = "auto"
    threshold: float | None = None
    tune_threshold: bool = False
    device: str = "auto"
    long_text: str | None = None
    window_stride: int | None = None
    aggregate: str | None = None
    allow_pickle: bool = False
    storage_options: tuple[str, ...] = ()  # for a --data URI (clsx.io.storage)

    def __post_init__(self) -> None:
        if self.tune_threshold and self.threshold is not None:
            raise ClsxError(f"--threshold {self.threshold:g} does nothing with --tune-threshold, "
                            "which picks the threshold on --data; give one of them")


@dataclass(frozen=True)
class CalibrateConfig:
    """Every option of ``clsx calibrate``.

    ``output`` None updates ``model``'s clsx.json in place; otherwise ``output`` becomes a
    copy of ``model`` with the new clsx.json (``overwrite`` replaces an existing one).
    """

    model: Path
    data: str | Path
    output: Path | None = None
    text_column: str = "text"
    label_column: str = "label"
    label_separator: str = ","
    device: str = "auto"
    overwrite: bool = False
    allow_pickle: bool = False
    storage_options: tuple[str, ...] = ()  # for a --data URI (clsx.io.storage)

    def __post_init__(self) -> None:
        if self.overwrite and self.output is None:
            raise ClsxError("--overwrite applies with --output only (without it, --model's "
                            "clsx.json is updated in place)")


@dataclass(frozen=True)
class BenchConfig:
    """Every option of ``clsx bench``: which rows of ``data``, which backends, how to run.

    ``exports_dir`` None exports into a temporary directory; ``batch_tokens`` and
    ``threads`` None are each backend's defaults.
    """

    model: Path
    data: Path
    text_column: str = "text"
    rows: int = 2000
    backends: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
    exports_dir: Path | None = None
    batch_tokens: int | None = None
    device: str = "auto"
    threads: int | None = None
    recheck: bool = True  # an "X + re-check" row beside each backend below fp32
    compare_models: tuple[Path, ...] = ()  # more models on the same rows (--compare-model)
    label_column: str | None = None  # gold labels in data: an accuracy per row
    # Each compared model as a cascade's first model, this model its fallback, at the cut
    # that keeps this share of the fallback's labels (None: no cascade rows).
    cascade_agreement: float | None = None

    def __post_init__(self) -> None:
        if self.cascade_agreement is not None and not self.compare_models:
            raise ClsxError("--cascade-agreement runs each --compare-model as a cascade's "
                            "first model: add --compare-model (a cheaper model, e.g. a "
                            "static student)")
        exports = [VARIANT_RUNS.get(name, (name, None))[0] for name in self.backends]
        if self.exports_dir is not None and all(export is None for export in exports):
            raise ClsxError("--exports-dir does nothing when --backends lists no export "
                            f"(only {', '.join(self.backends)}); drop it")

    def runner_options(self) -> RunnerOptions:
        return RunnerOptions(device=self.device, threads=self.threads)
