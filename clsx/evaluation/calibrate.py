"""``clsx calibrate``: fit an existing model's temperatures on labelled data.

The model classifies the data (through :class:`~clsx.inference.classifier.Classifier`, so texts are
encoded as at predict time) and temperature scaling is fitted on the raw logits
(:mod:`clsx.quality.calibration`); a multi-label model's thresholds are tuned again on the
calibrated probabilities. The result is a new ``clsx.json``, written over the model's own
(atomically) or into a copy of the model directory.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from clsx.artifacts.artifact import Artifact, open_artifact
from clsx.artifacts.manifest import MANIFEST_NAME, Manifest
from clsx.errors import ClsxError, os_error
from clsx.evaluation.config import CalibrateConfig
from clsx.inference.classifier import Classifier
from clsx.inference.runners import RunnerOptions
from clsx.io.outputs import check_output_directory
from clsx.io.staging import staged_directory
from clsx.io.tables import read_labelled
from clsx.log import Log, silent
from clsx.quality.calibration import calibrate_manifest, calibration_report


@dataclass(frozen=True)
class CalibrateResult:
    """The model directory written, its new manifest, and the calibration measures on the
    data (``ece``, ``brier``, ``nll``) with the model as it was (``before``: its previous
    temperatures, or none) and with the new temperatures (``after``)."""

    output: Path
    manifest: Manifest
    rows: int
    before: dict[str, float]
    after: dict[str, float]


def calibrate(config: CalibrateConfig, log: Log = silent) -> CalibrateResult:
    """Fit ``config.model``'s temperatures on ``config.data`` and save them: in a copy at
    ``config.output``, or (no output) in the model's own clsx.json.

    Refuses exports (their logits come from the PyTorch parent: calibrate that, then export
    again, so that parent and export agree) and regression models.
    """
    if config.output is not None:  # before any work: the output must be a new directory
        if config.output.resolve() == config.model.resolve():
            raise ClsxError(f"--output {config.output} is the model directory; leave --output "
                            "out to update its clsx.json in place")
        check_output_directory(config.output, config.overwrite)
    artifact = open_artifact(config.model, allow_pickle=config.allow_pickle)
    _check_calibratable(artifact)
    if config.output is None:
        result = _fit(artifact, config, config.model, log)
        path = config.model / MANIFEST_NAME
        try:
            result.manifest.save(config.model)  # atomic: the old clsx.json or the new one
        except OSError as exc:
            raise os_error("writing", path, exc) from exc
        return result
    with staged_directory(config.output, config.overwrite) as stage:
        result = _fit(artifact, config, config.output, log)
        try:
            shutil.copytree(config.model, stage, dirs_exist_ok=True)
            result.manifest.save(stage)
        except (OSError, shutil.Error) as exc:
            raise ClsxError(f"copying {config.model} to {config.output} failed: {exc}") from exc
    return result


def _check_calibratable(artifact: Artifact) -> None:
    manifest = artifact.manifest
    if manifest.format not in ("torch", "static"):  # a static model is its own source
        parent = (f" ({(artifact.path / manifest.parent).resolve()})" if manifest.parent
                  else "")
        raise ClsxError(f"{artifact.path} is an export ({manifest.format}); calibrate the PyTorch "
                        f"model it was exported from{parent}, then export it again")
    if manifest.problem_type == "regression":
        raise ClsxError(f"{artifact.path} is a regression model: its outputs are values, not "
                        "probabilities, so there is nothing to calibrate")


def _fit(artifact: Artifact, config: CalibrateConfig, output: Path, log: Log
         ) -> CalibrateResult:
    """Classify the data and fit the new manifest (nothing written)."""
    manifest = artifact.manifest
    labelled = read_labelled(config.data, config.text_column, config.label_column,
                             manifest.problem_type, labels=manifest.labels,
                             separator=config.label_separator,
                             storage_options=config.storage_options)
    log(f"Classifying {len(labelled.texts)} rows of {config.data} with {artifact.path} ...")
    # The fp32 PyTorch reference (a static model's own runner): temperatures are fitted on
    # the raw logits every backend reproduces, not on one machine's reduced-precision choice.
    reference = "static" if manifest.format == "static" else "torch"
    with Classifier.from_artifact(artifact, reference,
                                  RunnerOptions(device=config.device)) as classifier:
        logits = classifier.predict_all(labelled.texts).logits
    fitted = calibrate_manifest(manifest, logits, labelled.targets, log=log)
    return CalibrateResult(
        output=output, manifest=fitted, rows=len(labelled.texts),
        before=calibration_report(logits, labelled.targets, manifest.problem_type,
                                  manifest.temperatures),
        after=calibration_report(logits, labelled.targets, manifest.problem_type,
                                 fitted.temperatures))
