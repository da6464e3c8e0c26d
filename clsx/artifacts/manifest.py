"""The ``clsx.json`` manifest written beside every model artifact.

It records what a runner needs to reproduce the training-time behaviour (labels, problem
type, truncation, pad token, prompt template) and, for exports, where they came from and
how closely they match the PyTorch reference.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clsx.artifacts.long_text import LongText
from clsx.errors import ClsxError
from clsx.io import durable

MANIFEST_NAME = "clsx.json"
MANIFEST_VERSION = 1

FORMATS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8", "vllm", "tensorrt",
           "static")
# Formats that are Hugging Face weight directories (safetensors), loadable by transformers.
HF_FORMATS = ("torch", "vllm")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
DECODER_FAMILIES = ("qwen2", "qwen3", "llama")
ENCODER_FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "deberta-v2", "modernbert")
DEFAULT_THRESHOLD = 0.5  # multi-label decision threshold when the model has no tuned ones
MULTI_LABEL = "multi_label_classification"
FLOAT_TUPLES = ("thresholds", "temperatures")  # stored as JSON lists, held as tuples


def check_family(model_type: str | None, where: object) -> str:
    """Return ``model_type`` if clsx supports it, else fail naming ``where`` it came from."""
    if model_type not in DECODER_FAMILIES + ENCODER_FAMILIES:
        raise ClsxError(
            f"{where}: model_type {model_type!r} is not supported; clsx handles "
            f"{', '.join(DECODER_FAMILIES + ENCODER_FAMILIES)}"
        )
    return model_type


@dataclass(frozen=True)
class Manifest:
    """What clsx knows about one model directory.

    ``labels`` is in label-id order (``labels[i]`` is ``id2label[i]``). ``template`` is the
    exact input text with a ``{text}`` placeholder, applied identically at training and
    predict time, as is ``long_text`` (what happens to texts longer than ``max_length``).
    ``parent`` is the path of the artifact this one was exported from, relative to this
    directory, and ``parent_fingerprint`` lets a later run notice that it was retrained.
    ``fusions`` (ONNX exports) counts the ONNX Runtime fusions applied to the graph, by
    name; None is the exporter's unfused graph.
    ``base_model`` and ``training`` record how ``clsx train`` made it, ``distillation``
    (``clsx distill``) its teacher, the settings and, with ``--eval``, both models' metrics.
    ``thresholds`` (multi-label only) are the per-label decision thresholds ``clsx train``
    tuned on its evaluation split; without them a label is predicted at probability >= 0.5.
    ``temperatures`` calibrate the probabilities (temperature scaling, fitted by ``clsx
    train`` or ``clsx calibrate``): one value for a single-label model (softmax(logits / T)),
    one per label for a multi-label one (sigmoid(logit_j / T_j)); None (older manifests,
    ``--no-calibration``, regression) is the raw softmax / sigmoid.
    """

    family: str
    labels: tuple[str, ...]
    problem_type: str
    max_length: int
    pad_token_id: int | None
    format: str = "torch"
    template: str | None = None
    long_text: LongText = field(default_factory=LongText)
    thresholds: tuple[float, ...] | None = None
    temperatures: tuple[float, ...] | None = None
    parent: str | None = None
    parent_fingerprint: str | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    fusions: dict[str, int] | None = None
    base_model: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    distillation: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ClsxError(f"manifest format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ClsxError(
                f"manifest problem_type {self.problem_type!r} is not one of "
                f"{', '.join(PROBLEM_TYPES)}"
            )
        if not self.labels:
            raise ClsxError("manifest has no labels")
        if self.max_length < 1:
            raise ClsxError(f"manifest max_length must be >= 1, got {self.max_length}")
        if self.parent is not None and Path(self.parent).is_absolute():
            raise ClsxError(f"manifest parent {self.parent!r} must be a path relative to the "
                            "model directory")
        if self.template is not None and "{text}" not in self.template:
            raise ClsxError(f"manifest template {self.template!r} has no {{text}} placeholder")
        if self.template is not None and self.template.count("{text}") > 1:
            raise ClsxError(f"manifest template {self.template!r} has more than one {{text}} "
                            "placeholder; only one can be cut to max_length")
        if self.thresholds is not None and (
                len(self.thresholds) != len(self.labels)
                or not all(0 < t < 1 for t in self.thresholds)):
            raise ClsxError(f"manifest thresholds must be one value in (0, 1) per label "
                            f"({len(self.labels)}), got {list(self.thresholds)}")
        self._check_temperatures()
        if self.is_decoder and self.pad_token_id is None:
            raise ClsxError(
                f"a {self.family} classifier needs a pad token (config.pad_token_id is unset)"
            )

    def _check_temperatures(self) -> None:
        """One finite T > 0 for a single-label model, one per label for a multi-label one."""
        if self.temperatures is None:
            return
        if self.problem_type == "regression":
            raise ClsxError("manifest temperatures apply to classifiers; a regression model "
                            f"has none, got {list(self.temperatures)}")
        expected = self.num_labels if self.problem_type == MULTI_LABEL else 1
        if len(self.temperatures) != expected or not all(
                math.isfinite(t) and t > 0 for t in self.temperatures):
            what = (f"one per label ({expected})" if self.problem_type == MULTI_LABEL
                    else "one (single-label)")
            raise ClsxError(f"manifest temperatures must be finite values > 0, {what}, got "
                            f"{list(self.temperatures)}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def is_decoder(self) -> bool:
        """Decoder classifiers pool the last non-pad token, so padding must be exact."""
        return self.family in DECODER_FAMILIES

    @property
    def padding_id(self) -> int:
        """The id batches are padded with (masked out; encoders without a pad token use 0)."""
        return self.pad_token_id if self.pad_token_id is not None else 0

    def decision_thresholds(self, override: float | None = None) -> float | np.ndarray:
        """Multi-label cut-off: ``override`` for every label if given, else the tuned
        per-label thresholds, else 0.5."""
        if override is not None:
            return override
        return np.array(self.thresholds) if self.thresholds else DEFAULT_THRESHOLD

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        for name in FLOAT_TUPLES:
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        durable.write_file(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> Manifest | None:
        """Read ``clsx.json`` from ``directory``; None when there is none."""
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ClsxError(f"{path} is not valid JSON ({exc}); re-create the artifact") from exc
        if not isinstance(data, dict):
            raise ClsxError(f"{path} does not hold a JSON object; re-create the artifact")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ClsxError(f"{path} has unknown keys {unknown}; it was written by a newer clsx")
        if data.get("version", MANIFEST_VERSION) > MANIFEST_VERSION:
            raise ClsxError(f"{path} has version {data['version']}; upgrade clsx to read it")
        try:
            data["labels"] = tuple(str(label) for label in data["labels"])
            data["long_text"] = LongText(**data.get("long_text", {}))
            for name in FLOAT_TUPLES:
                if data.get(name) is not None:
                    data[name] = tuple(float(t) for t in data[name])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ClsxError(f"{path} is incomplete ({exc}); re-create the artifact") from exc

    @classmethod
    def from_config(cls, config: dict[str, Any], **fields: Any) -> Manifest:
        """Derive a manifest from a transformers ``config.json`` dict plus explicit fields."""
        num_labels = int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)
        id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
        labels = tuple(id2label.get(i, f"LABEL_{i}") for i in range(num_labels))
        problem_type = config.get("problem_type") or (
            "regression" if num_labels == 1 else "single_label_classification"
        )
        return cls(
            family=config["model_type"], labels=labels, problem_type=problem_type, **fields
        )
