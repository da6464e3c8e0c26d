"""Backends by name. Names map to import paths so that ``clsx --help`` never imports torch."""

from __future__ import annotations

import importlib

from clsx.artifacts.artifact import Artifact
from clsx.errors import ClsxError
from clsx.inference.runners.base import ENGINE_OPTIONS, Runner, RunnerOptions

# Order matters: ``auto`` picks the first backend whose formats include the artifact's.
RUNNERS: dict[str, str] = {
    "torch": "clsx.inference.runners.torch:TorchRunner",
    "onnx": "clsx.inference.runners.onnx:OnnxRunner",
    "openvino": "clsx.inference.runners.openvino:OpenvinoRunner",
    "vllm": "clsx.inference.runners.vllm:VllmRunner",
    "tensorrt": "clsx.inference.runners.tensorrt:TensorrtRunner",
    "static": "clsx.inference.runners.static:StaticRunner",
}
BACKENDS = ("auto", *RUNNERS)  # what --backend takes: a runner, or auto (the artifact's own)


def runner_class(name: str) -> type[Runner]:
    """Import and return the runner registered as ``name``."""
    if name not in RUNNERS:
        raise ClsxError(f"unknown backend {name!r}; known backends: {', '.join(RUNNERS)}")
    module_name, class_name = RUNNERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def backend_for(artifact: Artifact, requested: str) -> str:
    """Resolve ``auto`` to the backend that runs the artifact, and check an explicit choice."""
    fmt = artifact.manifest.format
    if requested == "auto":
        for name in RUNNERS:
            if fmt in runner_class(name).formats:
                return name
    if fmt not in runner_class(requested).formats:
        raise ClsxError(
            f"{artifact.path} holds a {fmt} model, which the {requested} backend cannot run; "
            f"export it first (`clsx export {artifact.path} --format {requested} --output DIR`) "
            f"and pass that DIR, or use --backend auto"
        )
    return requested


def load_runner(artifact: Artifact, backend: str = "auto", options: RunnerOptions | None = None
                ) -> Runner:
    """Open the backend that runs ``artifact`` (``auto``: the one matching its format)."""
    name = backend_for(artifact, backend)
    options = options or RunnerOptions()
    cls = runner_class(name)
    for option in ENGINE_OPTIONS:
        if getattr(options, option) is not None and option not in cls.engine_options:
            takers = [other for other in RUNNERS if option in runner_class(other).engine_options]
            named = ", ".join(takers[:-1]) + " and " + takers[-1] if len(takers) > 1 else takers[0]
            raise ClsxError(
                f"--{option.replace('_', '-')} applies to the {named} backend"
                f"{'s' if len(takers) > 1 else ''} only, not to {name}; drop it"
            )
    return cls(artifact, options)


__all__ = ["RUNNERS", "Runner", "RunnerOptions", "backend_for", "load_runner", "runner_class"]
