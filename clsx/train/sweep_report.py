"""The ``clsx sweep`` record: every trial as a Markdown table row, and the metric plotted
against each searched option (a PNG)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clsx.reports.page import new_figure
from clsx.train.search_space import Dimension, value_text

PANEL_INCHES = 3.6


@dataclass(frozen=True)
class TrialRow:
    """One trial: ``state`` is complete, pruned, failed, interrupted (killed, run again) or
    running; ``value`` the metric of the kept epoch (pruned: of the last epoch evaluated);
    ``epochs`` the metric after each epoch; ``minutes`` None while it runs."""

    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    epochs: list[float] = field(default_factory=list)
    minutes: float | None = None
    best: bool = False
    note: str = ""


def trials_markdown(rows: Sequence[TrialRow], space: Mapping[str, Dimension], metric: str
                    ) -> str:
    """A Markdown table of the trials, the best one marked."""
    names = list(space)
    header = ["trial", "state", *names, metric, f"{metric} per epoch", "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        state = f"**{row.state} (best)**" if row.best else row.state
        if row.note:
            state += f": {row.note}"
        per_epoch = ", ".join(f"{value:.4f}" for value in row.epochs)
        minutes = "" if row.minutes is None else f"{row.minutes:.1f}"
        value = "" if row.value is None else f"{row.value:.4f}"
        cells = [str(row.number), state, *(value_text(row.params.get(n, "")) for n in names),
                 value, per_epoch, minutes]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_plot(rows: Sequence[TrialRow], space: Mapping[str, Dimension], metric: str) -> bytes:
    """PNG: one panel per searched option, the metric of each completed (dots) and pruned
    (crosses, at their last epoch) trial against the option's value; the best one starred."""
    varied = [name for name, dimension in space.items() if dimension.varies]
    figure, axes = new_figure(PANEL_INCHES * len(varied), PANEL_INCHES, ncols=len(varied))
    axes = axes if len(varied) > 1 else [axes]
    for ax, name in zip(axes, varied, strict=True):
        dimension = space[name]
        categorical = not dimension.is_range and any(isinstance(v, str)
                                                     for v in dimension.choices)
        position = ({value: i for i, value in enumerate(dimension.choices)} if categorical
                    else None)

        def x_of(row: TrialRow, position=position, name=name) -> Any:
            return position[row.params[name]] if position else row.params[name]

        for state, style in (("complete", dict(marker="o", color="tab:blue")),
                             ("pruned", dict(marker="x", color="tab:gray"))):
            chosen = [r for r in rows if r.state == state and r.value is not None
                      and name in r.params]
            ax.scatter([x_of(r) for r in chosen], [r.value for r in chosen], label=state,
                       **style)
        best = [r for r in rows if r.best and name in r.params]
        ax.scatter([x_of(r) for r in best], [r.value for r in best], marker="*", s=220,
                   color="tab:red", label="best", zorder=3)
        if categorical:
            ax.set_xticks(range(len(dimension.choices)), [str(c) for c in dimension.choices])
            ax.set_xlim(-0.5, len(dimension.choices) - 0.5)
        elif dimension.parameter.log:
            ax.set_xscale("log", base=10 if name == "lr" else 2)
        ax.set_xlabel(dimension.parameter.flag.removeprefix("--"))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
