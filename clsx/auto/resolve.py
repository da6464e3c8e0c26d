"""``--backend auto`` resolved before a classifier opens.

A :class:`~clsx.inference.classifier.Classifier` runs one concrete backend in one dtype;
``auto`` there is only the backend of the model's format, in that backend's default dtype.
Choosing a dtype by measuring (:mod:`clsx.auto.dtype`) builds classifiers itself, so it lives
here, above the classifier it resolves.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from clsx.artifacts.artifact import Artifact
from clsx.auto.dtype import choose_dtype
from clsx.inference.classifier import Classifier
from clsx.inference.runners import RunnerOptions


def classifier_for(artifact: Artifact, backend: str = "auto",
                   options: RunnerOptions | None = None, **settings: Any) -> Classifier:
    """The classifier for ``artifact`` on ``backend``; with ``auto`` on a PyTorch model and no
    dtype given, in the fastest dtype whose parity with fp32 passes on this machine.

    ``settings`` are :meth:`Classifier.from_artifact`'s keyword arguments.
    """
    options = options or RunnerOptions()
    if backend == "auto" and artifact.manifest.format == "torch" and options.dtype is None:
        options = dataclasses.replace(options, dtype=choose_dtype(artifact, options).dtype)
    return Classifier.from_artifact(artifact, backend, options, **settings)
