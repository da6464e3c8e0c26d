"""``clsx export --format vllm``: a Hugging Face directory that vLLM's pooling runner loads.

The weights are saved in the chosen dtype with a config that vLLM reads as a classifier
(``*ForSequenceClassification``, ``num_labels``, ``id2label``, ``problem_type``, pad token).
Where vLLM is installed, the staged directory is loaded in vLLM and its probabilities on a
mixed-length batch are checked against PyTorch fp32 before the directory appears.
"""

from __future__ import annotations

import gc
from pathlib import Path

from clsx.artifacts.artifact import save_artifact
from clsx.errors import ClsxError
from clsx.export.common import ExportResult, export_manifest, open_export, open_torch_artifact
from clsx.export.config import VLLM_DTYPE
from clsx.export.config import VLLM_DTYPES as DTYPES
from clsx.inference.runners import RunnerOptions
from clsx.io.staging import staged_directory
from clsx.quality.parity import ParityReport, compare, dtype_gate_failure, parity_inputs

INSTALL_OR_SKIP = "or pass --no-parity to export without the vLLM check"


def export_vllm(
    model_dir: Path,
    output: Path,
    *,
    dtype: str = VLLM_DTYPE,
    tolerance: float | None = None,
    check: bool = True,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> ExportResult:
    """Save a torch artifact for vLLM in ``dtype`` and, with ``check``, gate it on parity.

    The gate is the dtype gate (:func:`~clsx.quality.parity.dtype_gate_failure`): on 32 rows
    of lengths 1..max_length, vLLM's probabilities (softmax / sigmoid / value, as in the
    ``probs`` column) must stay within ``tolerance`` (default by dtype: ``PROB_TOLERANCES``)
    of PyTorch fp32's and every label users get must equal fp32's. Nothing is left at
    ``output`` on failure.
    """
    if dtype not in DTYPES:
        raise ClsxError(f"--dtype must be one of {', '.join(DTYPES)} for vllm, got {dtype!r}")
    artifact = open_torch_artifact(model_dir, allow_pickle)
    if not artifact.manifest.is_decoder:
        raise ClsxError(
            f"{model_dir} is a {artifact.manifest.family} (encoder) classifier; the vllm export "
            "covers decoder classifiers (qwen2, qwen3, llama): export it with --format onnx"
        )
    if check:
        _require_vllm()
    from clsx.inference.classifier import Classifier
    from clsx.inference.torch_model import DTYPES as TORCH_DTYPES

    probe = parity_inputs(artifact.manifest, artifact.tokenizer, rows=32)
    with Classifier.from_artifact(artifact, "torch",
                                  RunnerOptions(device="cpu", dtype="fp32")) as torch_model:
        reference = torch_model.predict_encoded(probe).logits if check else None
        model = torch_model.runner.model.model
    parity: dict[str, ParityReport] = {}
    with staged_directory(output, overwrite) as stage:
        manifest = export_manifest(artifact, output, "vllm", parity)
        save_artifact(model.to(TORCH_DTYPES[dtype]), artifact.tokenizer, stage, manifest)
        del model, torch_model
        gc.collect()
        if check:
            with open_export(stage, "vllm", RunnerOptions()) as engine:
                parity[dtype] = compare(reference, engine.predict_encoded(probe).logits,
                                        engine.rule)
            failure = dtype_gate_failure(dtype, parity[dtype], tolerance)
            if failure is not None:
                raise ClsxError(f"vLLM ({dtype}) {failure} on the parity batch; not exporting "
                                "(try --dtype fp32)")
            manifest = export_manifest(artifact, output, "vllm", parity)
            manifest.save(stage)
    return ExportResult(output=output, manifest=manifest, parity=parity)


def _require_vllm() -> None:
    from clsx.inference.runners.vllm import import_vllm

    try:
        import_vllm()
    except ClsxError as exc:
        raise ClsxError(f"{exc}; {INSTALL_OR_SKIP}") from exc
