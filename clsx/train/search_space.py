"""What ``clsx sweep`` searches: training options, each over a list or a range of values.

A flag takes a list (``--lr 1e-5,5e-5``: those values) or a range (``--lr 1e-5:1e-3``: any
value between, both ends included). Ranges of the learning rate, batch size and LoRA rank
and alpha are searched on a log scale, epochs over whole numbers. One value fixes the
option for every trial.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clsx.errors import ClsxError
from clsx.train.config import TrainConfig


@dataclass(frozen=True)
class Parameter:
    """How one searchable TrainConfig field reads from the command line.

    ``parse`` reads one value; ``log`` searches a range on a log scale; ``whole`` draws a
    range's values as integers; ``ranges`` is False where only lists make sense.
    """

    flag: str
    parse: Callable[[str], Any]
    log: bool = False
    whole: bool = False
    ranges: bool = True


def _whole(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


# TrainConfig field -> its flag; the order of the table's and the plot's columns.
PARAMETERS = {
    "lr": Parameter("--lr", float, log=True),
    "epochs": Parameter("--epochs", float, whole=True),
    "batch_size": Parameter("--batch-size", _whole, log=True, whole=True),
    "lora_r": Parameter("--lora-r", _whole, log=True, whole=True),
    "lora_alpha": Parameter("--lora-alpha", _whole, log=True, whole=True),
    "method": Parameter("--method", str, ranges=False),
}
RANGE = ":"
LIST = ","


@dataclass(frozen=True)
class Dimension:
    """One searched option: ``choices`` (a list) or ``low``..``high`` (a range)."""

    name: str
    choices: tuple[Any, ...] = ()
    low: Any = None
    high: Any = None

    @property
    def parameter(self) -> Parameter:
        return PARAMETERS[self.name]

    @property
    def is_range(self) -> bool:
        return self.low is not None

    @property
    def varies(self) -> bool:
        """Whether trials can differ in this option (a range, or a list of two or more)."""
        return self.is_range or len(self.choices) > 1

    @property
    def text(self) -> str:
        """The values as a flag would give them (stored with the sweep, shown in errors)."""
        if self.is_range:
            return f"{self.low:g}{RANGE}{self.high:g}"
        return LIST.join(value_text(v) for v in self.choices)

    @property
    def ends(self) -> tuple[Any, ...]:
        """The values that bound this dimension: a list's values, a range's two ends."""
        return (self.low, self.high) if self.is_range else self.choices

    def suggest(self, trial: Any) -> Any:
        """This option's value for an Optuna trial (fixed when the trial was enqueued)."""
        if not self.is_range:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.parameter.whole:
            value = trial.suggest_int(self.name, self.low, self.high, log=self.parameter.log)
            return float(value) if self.name == "epochs" else value
        return trial.suggest_float(self.name, self.low, self.high, log=self.parameter.log)


def value_text(value: Any) -> str:
    """One option's value as a flag would give it (``0.0001``, ``3``, ``lora``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_text(params: Mapping[str, Any]) -> str:
    """A trial's settings in one line: ``lr 0.0001, epochs 3, method lora``."""
    return ", ".join(f"{name} {value_text(value)}" for name, value in params.items())


def parse_dimension(name: str, text: str) -> Dimension:
    """``--NAME TEXT`` as a dimension; a one-line error for what cannot be searched."""
    parameter = PARAMETERS[name]
    flag = f"{parameter.flag} {text}"

    is_range = RANGE in text
    # A range of a whole-number option (epochs included) runs over whole numbers.
    parse = _whole if is_range and parameter.whole else parameter.parse

    def value(item: str) -> Any:
        try:
            return parse(item.strip())
        except ValueError:
            kind = "a whole number" if parse is _whole else "a number"
            raise ClsxError(f"{flag}: {item.strip()!r} is not {kind}") from None

    if is_range:
        if not parameter.ranges:
            raise ClsxError(f"{flag}: {parameter.flag} takes a list of values "
                            f"(e.g. lora,full), not a range")
        low, _, high = text.partition(RANGE)
        low, high = value(low), value(high)
        if not low < high:
            raise ClsxError(f"{flag} is an empty range: give LOW{RANGE}HIGH with LOW < HIGH "
                            f"(or one value to fix it)")
        return Dimension(name, low=low, high=high)
    items = text.split(LIST)
    if not all(item.strip() for item in items):
        raise ClsxError(f"{flag}: give values separated by commas, without empty ones")
    return Dimension(name, choices=tuple(dict.fromkeys(value(item) for item in items)))


def parse_space(flags: Mapping[str, str]) -> dict[str, Dimension]:
    """The dimensions of the given flags (TrainConfig field -> text), in table order."""
    return {name: parse_dimension(name, flags[name]) for name in PARAMETERS if name in flags}


def check_space(space: Mapping[str, Dimension], base: TrainConfig) -> None:
    """Fail now, with train's own message, on a value no trial could train with."""
    for dimension in space.values():
        for end in dimension.ends:
            dataclasses.replace(base, **{dimension.name: end})


def grid(space: Mapping[str, Dimension]) -> list[dict[str, Any]]:
    """Every combination of the dimensions' values, the first flag's values slowest."""
    ranges = [d for d in space.values() if d.is_range]
    if ranges:
        given = ", ".join(f"{d.parameter.flag} {d.text}" for d in ranges)
        raise ClsxError(f"--grid needs lists of values, and {given} is a range: give the "
                        f"values to try (e.g. --lr 1e-5,1e-4) or use --trials N")
    names = list(space)
    return [dict(zip(names, values, strict=True))
            for values in itertools.product(*(space[name].choices for name in names))]
