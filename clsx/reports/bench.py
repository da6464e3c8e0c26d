"""The ``clsx bench --report`` page: each backend's speed, memory and faithfulness to fp32."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from clsx import __version__
from clsx.errors import ClsxError
from clsx.evaluation.bench import BenchRow, agreement_text
from clsx.reports.page import (
    cards,
    figures,
    image,
    key_values,
    new_figure,
    note,
    number,
    page,
    section,
    table,
)

# Bars in backend order, one colour per backend, the same in every chart of the page.
COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")
# A max |logit diff| of exactly 0 is drawn at this height on the log axis.
LOG_FLOOR = 1e-9


def bench_report(rows: Sequence[BenchRow], context: Mapping[str, str],
                 machine: Mapping[str, str]) -> str:
    """The HTML page of one ``clsx bench`` run: ``rows`` as :func:`clsx.evaluation.bench.run_bench`
    returns them (the torch fp32 reference first), ``context`` (command, model, data, time)
    and ``machine`` (:func:`clsx.inference.hardware.machine_facts`) shown as given."""
    if not rows:
        raise ClsxError("a bench report needs at least one measured backend")
    reference, fastest = rows[0], max(rows, key=lambda row: row.rows_per_s)
    headline = {
        f"rows/s, {reference.variant} (reference)": number(reference.rows_per_s),
        f"fastest: {fastest.variant}": f"{number(fastest.rows_per_s)} rows/s",
        "speed-up of the fastest": f"{fastest.speedup:.2f}x",
        "rows per backend": number(reference.rows),
    }
    names, base = [row.variant for row in rows], reference.variant
    speed = _bars(names, {"rows/s": [row.rows_per_s for row in rows],
                          "tokens/s": [row.tokens_per_s for row in rows]},
                  [f"{row.speedup:.2f}x" for row in rows])
    memory = _bars(names, {"peak RSS (MB)": [row.peak_rss_mb for row in rows]},
                   [f"{number(row.peak_rss_mb)} MB" for row in rows])
    sections = [
        section("Headline", cards(headline)),
        section("Throughput", note("Rows and tokens per second on the same rows, warm-up "
                                   "excluded; the label on each bar is the speed-up versus "
                                   f"{base}."), figures(speed)),
        section("Faithfulness and memory",
                note(f"Max |logit difference| versus {base} (log scale; the reference itself "
                     "is 0) and the process's peak resident memory while each backend ran."),
                figures(_difference(rows), memory)),
        *_tradeoff_section(rows),
        section("All figures", table(
            ("variant", "backend", "rows", "seconds", "rows/s", "tokens/s", f"x {base}",
             "peak RSS MB", f"labels = {base}", "max |Δlogit|", "accuracy"),
            [(row.variant, row.backend, row.rows, row.seconds, row.rows_per_s,
              row.tokens_per_s, row.speedup, row.peak_rss_mb, agreement_text(row),
              f"{row.max_abs_diff:.2e}",
              "n/a" if row.accuracy is None else f"{row.accuracy:.2%}") for row in rows])),
        section("Run", key_values({**context, "clsx": __version__})),
        section("Machine", key_values(machine)),
    ]
    return page("clsx bench", f"{len(rows)} backends on {reference.rows} rows, against "
                f"{reference.backend}", sections)


def _bars(names: Sequence[str], series: Mapping[str, Sequence[float]],
          labels: Sequence[str]) -> str:
    """One horizontal bar chart per series, side by side, backends top to bottom; the
    first chart's bars carry ``labels``."""
    height = 0.5 * len(names) + 1.3
    figure, axes = new_figure(4.4 * len(series), height, ncols=len(series))
    for i, (axis, (title, values)) in enumerate(zip(_as_list(axes), series.items(),
                                                     strict=True)):
        bars = axis.barh(names, values, color=_colours(names))
        axis.invert_yaxis()  # the reference on top, as in the table
        axis.set_title(title)
        axis.grid(axis="x", alpha=0.3)
        axis.set_xlim(0, max(values) * 1.25 or 1)  # room for the bar labels
        if i == 0:
            axis.bar_label(bars, labels, padding=3, fontsize=8)
        else:
            axis.set_yticks(range(len(names)), [""] * len(names))
    return image(figure, ", ".join(series) + " per backend")


def _difference(rows: Sequence[BenchRow]) -> str:
    """Max |logit diff| versus the reference on a log axis (the reference is left blank)."""
    names = [row.variant for row in rows]
    figure, axis = new_figure(4.4, 0.5 * len(rows) + 1.3)
    values = [max(row.max_abs_diff, LOG_FLOOR) for row in rows]
    bars = axis.barh(names, [0, *values[1:]], color=_colours(names))
    axis.bar_label(bars, ["", *(f"{row.max_abs_diff:.1e}" for row in rows[1:])],
                   padding=3, fontsize=8)
    axis.set_xscale("log")
    low = min(values[1:], default=1e-6) / 10
    axis.set_xlim(low, max(values[1:], default=1.0) * 100)
    # A bar of length 0 has no end on a log axis: name the reference in its place.
    axis.text(low * 1.5, 0, "reference", va="center", fontsize=8, color="#57606a")
    axis.invert_yaxis()
    axis.set_title(f"max |logit diff| vs {rows[0].variant}")
    axis.grid(axis="x", alpha=0.3)
    return image(figure, "max absolute logit difference per backend")


def _tradeoff_section(rows: Sequence[BenchRow]) -> list[str]:
    """Accuracy (with ``--label-column``; else agreement with the reference) against rows/s,
    each backend and compared model a point: the picture that tells which rung to run.
    Empty where there is nothing to plot (no labels, no compared model, no agreement)."""
    accuracy = all(row.accuracy is not None for row in rows)
    compared = any(row.compared for row in rows)
    points = [(row.rows_per_s, row.accuracy if accuracy else row.label_agreement, row.variant)
              for row in rows]
    if not (accuracy or compared) or any(y is None for _, y, _ in points):
        return []
    measure = "accuracy on --label-column" if accuracy else f"labels = {rows[0].variant}"
    figure, axis = new_figure(6.4, 4.2)
    for i, (x, y, name) in enumerate(points):
        axis.scatter([x], [y], color=COLOURS[i % len(COLOURS)], zorder=3)
        # Neighbours (a backend and its re-check) overlap: labels step up in turn.
        axis.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4 + 10 * (i % 3)),
                      fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("rows/s (log)")
    axis.set_ylabel(measure)
    axis.grid(True, which="both", alpha=0.3)
    return [section("Accuracy against speed",
                    note(f"Each backend and compared model on the same rows: {measure} "
                         "against rows/s. Up and to the right is better; a point that another "
                         "beats on both axes is never the one to run."),
                    figures(image(figure, f"{measure} against rows/s")))]


def _colours(names: Sequence[str]) -> list[str]:
    return [COLOURS[i % len(COLOURS)] for i in range(len(names))]


def _as_list(axes: object) -> list:
    """matplotlib returns one Axes for one column, an array of them for more."""
    return list(axes) if hasattr(axes, "__len__") else [axes]
