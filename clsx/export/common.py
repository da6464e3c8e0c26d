"""What every export stage shares: its source checkpoint, its result, its manifest."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clsx.artifacts.artifact import Artifact, open_artifact
from clsx.artifacts.manifest import Manifest
from clsx.errors import ClsxError
from clsx.inference.runners import RunnerOptions
from clsx.quality.parity import ParityReport
from clsx.quality.recheck import STORED, RecheckCut

if TYPE_CHECKING:
    from clsx.inference.classifier import Classifier


@dataclass(frozen=True)
class ExportResult:
    """Where the export went, how it compared with the PyTorch reference, and notes on
    choices the export made (e.g. layers kept in fp32)."""

    output: Path
    manifest: Manifest
    parity: dict[str, ParityReport]
    notes: tuple[str, ...] = ()


def open_torch_artifact(model_dir: Path | Artifact, allow_pickle: bool = False) -> Artifact:
    """Open the merged PyTorch checkpoint an export starts from (never another export).

    An already opened :class:`Artifact` is taken as it is (``allow_pickle`` was decided
    when it was opened), with the fingerprint it has already computed.
    """
    artifact = (model_dir if isinstance(model_dir, Artifact)
                else open_artifact(model_dir, allow_pickle=allow_pickle))
    if artifact.manifest.format != "torch":
        raise ClsxError(
            f"{artifact.path} is already a {artifact.manifest.format} export; export from the "
            "merged PyTorch model directory"
        )
    return artifact


def export_manifest(parent: Artifact, output: Path, fmt: str,
                    parity: dict[str, ParityReport],
                    fusions: dict[str, int] | None = None,
                    recheck: RecheckCut | None = None) -> Manifest:
    """The parent's manifest re-labelled as a ``fmt`` export of it, with the parity figures,
    the graph fusions applied (None: an unfused graph) and the re-check cut measured on the
    calibration data (stored in ``parity["recheck"]``, read by :mod:`clsx.auto.recheck`).

    ``parent`` is stored relative to ``output`` (the staging directory beside it resolves
    the same way), with a fingerprint that notices a later retraining of the parent.
    """
    return parent.manifest.replace(
        format=fmt,
        parent=os.path.relpath(parent.path.resolve(), Path(output).resolve()),
        parent_fingerprint=parent.fingerprint,
        parity={**{name: report.to_json() for name, report in parity.items()},
                **({STORED: recheck.to_json()} if recheck is not None else {})},
        fusions=fusions,
    )


def open_export(directory: Path, backend: str, options: RunnerOptions) -> Classifier:
    """A staged export opened as users will open it, to be gated (its parent link is
    relative to the final path, so it is not followed from the staging directory)."""
    from clsx.inference.classifier import Classifier

    return Classifier.from_artifact(open_artifact(directory, check_parent=False), backend,
                                    options)


def write_tokenizer_and_config(parent: Artifact, directory: Path) -> None:
    """The parent's tokenizer and config beside a graph: with a manifest, the files that
    make it an artifact."""
    parent.tokenizer.save_pretrained(directory)
    shutil.copy2(parent.path / "config.json", directory / "config.json")
