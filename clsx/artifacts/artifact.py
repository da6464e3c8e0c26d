"""Opening and saving model directories: config, weights, tokenizer and manifest together.

An artifact is a normal Hugging Face directory (``config.json``, tokenizer files, weights)
plus ``clsx.json``. Directories that clsx did not write are accepted too: their manifest is
derived from the config and tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from clsx.artifacts.manifest import (
    DECODER_FAMILIES,
    HF_FORMATS,
    MANIFEST_NAME,
    Manifest,
    check_family,
)
from clsx.environment import quiet_loading
from clsx.errors import ClsxError

DEFAULT_MAX_LENGTH = 512
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "model.xml"  # an openvino export's IR (its weights: model.bin beside it)
STATIC_FILE = "static.safetensors"  # a static student's token vectors and head
# An openvino-int8 export's own fp32 IR (an openvino export of the same parent), which its
# re-check runs: no parent model needed, and OpenVINO fp32 starts and runs faster than torch.
FP32_REFERENCE = "fp32"
_FINGERPRINT_SAMPLE = 1 << 20
# The weight files a fingerprint reads, in this order (pickle ``.bin`` last: a directory
# without pickle weights keeps the fingerprint it had before they were counted).
WEIGHT_PATTERNS = ("*.safetensors", "*.onnx*", "*.xml", "*.bin")


@dataclass(frozen=True)
class Artifact:
    """An opened model directory: where it is, what it holds, and its tokenizer."""

    path: Path
    manifest: Manifest
    tokenizer: Any
    allow_pickle: bool = False

    @cached_property
    def fingerprint(self) -> str:
        """:func:`fingerprint` of the directory, computed on first use and then kept: every
        step of one command (job record, format and dtype choices, exports) sees the same
        value, and the weights are read once."""
        return fingerprint(self.path)


def open_artifact(path: str | Path, *, check_parent: bool = True, allow_pickle: bool = False
                  ) -> Artifact:
    """Open and validate a model directory, failing with the fix when something is off.

    Weights load from safetensors only, unless ``allow_pickle`` accepts ``.bin`` files
    (unpickling can run code). Nothing in the directory is ever executed: remote code stays
    off, and the manifest's ``parent`` link is only read to fingerprint the parent.
    """
    path = Path(path)
    if not path.is_dir():
        raise ClsxError(f"model directory {path} does not exist")
    config = _load_config(path)
    manifest = Manifest.load(path)
    tokenizer = _load_tokenizer(path)
    if manifest is None:
        manifest = _derive_manifest(config, tokenizer)
    if manifest.num_labels != config["num_labels"]:
        raise ClsxError(
            f"{path}: clsx.json lists {manifest.num_labels} labels but config.json has "
            f"num_labels={config['num_labels']}; re-export the model"
        )
    _check_weights(path, manifest, allow_pickle)
    if check_parent:
        _check_parent(path, manifest)
    return Artifact(path=path, manifest=manifest, tokenizer=tokenizer, allow_pickle=allow_pickle)


def save_artifact(model: Any, tokenizer: Any, directory: Path, manifest: Manifest) -> None:
    """Write a torch model, its tokenizer and manifest as one artifact directory.

    Decoder tokenizers get the manifest's pad token so that the tokenizer, the config and
    the manifest agree on it.
    """
    if manifest.pad_token_id is not None:
        model.config.pad_token_id = manifest.pad_token_id
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(manifest.pad_token_id)
    model.config.id2label = dict(enumerate(manifest.labels))
    model.config.label2id = {label: i for i, label in enumerate(manifest.labels)}
    model.config.problem_type = manifest.problem_type
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    manifest.save(directory)


def fingerprint(path: Path) -> str:
    """A cheap content fingerprint of a model directory's config, manifest and weights.

    Hashes config.json and clsx.json (labels, template, thresholds) whole and, per weight
    file (safetensors, ONNX, and pickle ``.bin`` ones), its name, size and first and last MiB:
    enough to notice a retrained model without reading gigabytes of weights.
    """
    digest = hashlib.sha256()
    digest.update((path / "config.json").read_bytes())
    manifest = path / MANIFEST_NAME
    if manifest.is_file():
        digest.update(manifest.read_bytes())
    files = [weights for pattern in WEIGHT_PATTERNS for weights in sorted(path.glob(pattern))]
    for weights in files:
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as handle:
            digest.update(handle.read(_FINGERPRINT_SAMPLE))
            handle.seek(max(0, size - _FINGERPRINT_SAMPLE))
            digest.update(handle.read(_FINGERPRINT_SAMPLE))
    return digest.hexdigest()[:16]


def _load_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ClsxError(
            f"{path} has no config.json: pass a Hugging Face model directory "
            "(save_pretrained output) or a clsx export"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClsxError(f"{config_path} is not valid JSON ({exc})") from exc
    check_family(config.get("model_type"), config_path)
    architectures = config.get("architectures") or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ClsxError(
            f"{config_path}: architectures {architectures} has no *ForSequenceClassification; "
            "this is not a classifier checkpoint (train one with `clsx train`)"
        )
    id2label = config.get("id2label") or {}
    config["num_labels"] = int(config.get("num_labels") or len(id2label) or 2)
    return config


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ClsxError(
            f"{path} has no tokenizer (tokenizer.json); save the tokenizer beside the model "
            "with tokenizer.save_pretrained(DIR)"
        )
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many types for a broken tokenizer
        raise ClsxError(f"cannot load the tokenizer in {path}: {exc}") from exc
    if not tokenizer.is_fast:
        raise ClsxError(f"the tokenizer in {path} is not a fast (Rust) tokenizer")
    return tokenizer


def pad_token_id(family: str, tokenizer: Any) -> int | None:
    """The tokenizer's pad id; for decoders without one, EOS (the customary stand-in)."""
    if tokenizer.pad_token_id is None and family in DECODER_FAMILIES:
        return tokenizer.eos_token_id
    return tokenizer.pad_token_id


def _derive_manifest(config: dict[str, Any], tokenizer: Any) -> Manifest:
    pad = config.get("pad_token_id")
    if pad is None:
        pad = pad_token_id(config["model_type"], tokenizer)
    positions = config.get("max_position_embeddings") or DEFAULT_MAX_LENGTH
    return Manifest.from_config(
        config, max_length=min(DEFAULT_MAX_LENGTH, int(positions)), pad_token_id=pad
    )


def _check_weights(path: Path, manifest: Manifest, allow_pickle: bool) -> None:
    if manifest.format in HF_FORMATS:
        if any(path.glob("*.safetensors")):
            return
        if manifest.format == "torch" and any(path.glob("*.bin")):
            if allow_pickle:
                return
            raise ClsxError(
                f"{path} holds only pickle (.bin) weights, which can run code when loaded; "
                "convert them to safetensors (model.save_pretrained(DIR)) or, if you trust "
                "them, pass --allow-pickle"
            )
        raise ClsxError(f"{path} has no model weights (*.safetensors)")
    graph = {"static": STATIC_FILE}.get(manifest.format, OPENVINO_FILE if manifest.format
                                        .startswith("openvino") else ONNX_FILE)
    if not (path / graph).is_file():
        raise ClsxError(f"{path} is a {manifest.format} export without {graph}; re-export it")


def _check_parent(path: Path, manifest: Manifest) -> None:
    """Refuse an export whose parent still exists but no longer holds the same weights."""
    if manifest.parent is None or manifest.parent_fingerprint is None:
        return
    parent = (path / manifest.parent).resolve()
    if (parent / "config.json").is_file() and fingerprint(parent) != manifest.parent_fingerprint:
        raise ClsxError(
            f"{path} was exported from {parent}, which has changed since (retrained?); "
            f"re-export it with `clsx export {parent} --format {manifest.format} "
            f"--output {path} --overwrite`"
        )
