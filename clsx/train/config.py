"""The options of one training run, checked up front."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clsx.artifacts.long_text import LongText
from clsx.artifacts.manifest import PROBLEM_TYPES
from clsx.errors import ClsxError

DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ENCODER_TARGETS = ("query", "key", "value", "dense")
METHODS = ("lora", "full")
LORA_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "lora_embeddings")
WINDOW_OPTIONS = ("window_stride", "aggregate")  # what --long-text window reads
PROBLEM_ALIASES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


def refuse_idle_options(given: Mapping[str, Any]) -> None:
    """Refuse training options that were ``given`` (TrainConfig field names; None or False:
    not given) but would do nothing beside the others given: ``eval_fraction`` with
    ``eval``, the LoRA options with ``method`` full, ``window_stride`` and ``aggregate``
    without ``long_text`` window."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    if given.get("eval_fraction") is not None and given.get("eval") is not None:
        raise ClsxError("--eval-fraction applies without --eval only (it holds out part of "
                        "--train for evaluation)")
    if given.get("method") == "full":
        for name in LORA_OPTIONS:
            if given.get(name) not in (None, False):
                raise ClsxError(f"{flag(name)} applies to --method lora only, not to full")
    if given.get("long_text") != "window":
        for name in WINDOW_OPTIONS:
            if given.get(name) is not None:
                raise ClsxError(f"{flag(name)} applies with --long-text window only")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``clsx train``, and the one owner of their defaults (the CLI shows
    them in --help and passes only the options given); defaults follow the seed recipe.

    LoRA r 64, alpha 128, dropout 0.1 on the attention and MLP projections; lr 5e-5,
    3 epochs, batch 8 / 4, evaluation each epoch and the best epoch kept (macro-F1, or MSE
    for regression). ``calibration``: fit temperature scaling on the eval split at the end
    (classifiers; see :mod:`clsx.quality.calibration`).
    """

    model: str
    train: str | Path | None  # a path or object-store URI; None only for ``clsx distill``
    output: Path
    eval: str | Path | None = None
    text_column: str = "text"
    label_column: str = "label"
    problem_type: str = "single_label_classification"
    label_separator: str = ","
    method: str = "lora"
    epochs: float = 3.0
    lr: float = 5e-5
    warmup: float = 0.1
    batch_size: int = 8
    eval_batch_size: int = 4
    max_length: int = 512
    long_text: str = "truncate"
    window_stride: int | None = None
    aggregate: str = "mean"
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] | None = None
    lora_embeddings: bool = False
    eval_fraction: float = 0.1
    seed: int = 42
    template: str | None = None
    label_descriptions: Path | None = None
    chat: bool = False
    calibration: bool = True
    bf16: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    resume: bool = False
    overwrite: bool = False
    storage_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = PROBLEM_ALIASES.get(self.problem_type, self.problem_type)
        if problem not in PROBLEM_TYPES:
            raise ClsxError(f"--problem-type {self.problem_type!r} is not one of "
                            f"{', '.join(PROBLEM_ALIASES)}")
        object.__setattr__(self, "problem_type", problem)
        if self.method not in METHODS:
            raise ClsxError(f"--method {self.method!r} is not one of {', '.join(METHODS)}")
        positive = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size, "max_length": self.max_length,
                    "lora_r": self.lora_r, "lora_alpha": self.lora_alpha}
        for name, value in positive.items():
            if value <= 0:
                raise ClsxError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if not 0 <= self.warmup < 1:
            raise ClsxError(f"--warmup must be in [0, 1), got {self.warmup}")
        if not 0 <= self.lora_dropout < 1:
            raise ClsxError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 < self.eval_fraction < 1:
            raise ClsxError(f"--eval-fraction must be in (0, 1), got {self.eval_fraction}")
        if self.template is not None and "{text}" not in self.template:
            raise ClsxError(f"--template {self.template!r} has no {{text}} placeholder")
        _ = self.long_text_setting  # fails on a bad --long-text, --window-stride, --aggregate
        if self.label_descriptions is not None and not Path(self.label_descriptions).is_file():
            raise ClsxError(f"--label-descriptions file {self.label_descriptions} does not exist")

    @property
    def long_text_setting(self) -> LongText:
        """What happens to texts over ``max_length`` tokens, in training and in the manifest."""
        return LongText(self.long_text, self.window_stride, self.aggregate)

    def targets_for(self, is_decoder: bool) -> list[str]:
        """LoRA target modules: the given ones, or the seed's defaults for the family."""
        targets = list(self.target_modules or (DECODER_TARGETS if is_decoder else ENCODER_TARGETS))
        if self.lora_embeddings:
            targets.append("embed_tokens" if is_decoder else "word_embeddings")
        return targets

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DistillConfig:
    """Every option of ``clsx distill``: the teacher that labels ``data``, the student and how
    it learns from the soft labels; ``training`` holds the student's other ``clsx train``
    options given (TrainConfig field names; the rest keep TrainConfig's defaults).

    ``temperature`` softens both models' single-label distributions in the KL term (scaled
    by its square, as in Hinton et al.); ``alpha`` is the weight of the gold-label loss on
    the rows ``train`` labels (the teacher's soft labels get 1 - alpha there, and everything
    on the other rows). ``problem_type`` None is the teacher's. ``augment`` is the perturbed
    copies of each ``data`` text the teacher labels too (:mod:`clsx.train.augment`); None
    (auto) is :func:`~clsx.train.augment.auto_copies` for a static student, none for the
    others (their training time grows with the rows).
    """

    teacher: Path
    data: Path
    student: str
    output: Path
    train: Path | None = None
    eval: Path | None = None
    problem_type: str | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    teacher_backend: str = "auto"
    augment: int | None = None
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.augment is not None and self.augment < 0:
            raise ClsxError(f"--augment must be a whole number >= 0 or auto, got {self.augment}")
        if not self.temperature > 0:
            raise ClsxError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ClsxError(f"--alpha must be in [0, 1], got {self.alpha}")
        refuse_idle_options({**self.training, "eval": self.eval})
        self._train_config(self.problem_type or "single_label")  # fails on a bad option

    def student_config(self, teacher_problem_type: str) -> TrainConfig:
        """The student's ``clsx train`` options: the teacher's problem type, which a given
        ``problem_type`` must equal."""
        given = PROBLEM_ALIASES.get(self.problem_type or "", self.problem_type)
        if given is not None and given != teacher_problem_type:
            shown = {full: alias for alias, full in PROBLEM_ALIASES.items()}
            raise ClsxError(
                f"the teacher is a {shown.get(teacher_problem_type, teacher_problem_type)} "
                f"model and a student learns its problem type; drop --problem-type "
                f"{self.problem_type} (or distil from a {self.problem_type} teacher)")
        return self._train_config(teacher_problem_type)

    def _train_config(self, problem_type: str) -> TrainConfig:
        return TrainConfig(model=self.student, train=self.train, output=self.output,
                           eval=self.eval, problem_type=problem_type, **self.training)
