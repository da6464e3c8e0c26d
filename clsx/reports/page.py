"""What every HTML report is made of: one self-contained page, tables, figures as PNG data.

A report is a single file that opens anywhere, offline: the CSS is inline, every picture is
a base64 PNG ``data:`` URI, and there is no script. Every piece of text that came from data
(texts, labels, paths, settings) goes through :func:`html.escape` here, so the builders in
``eval.py`` and ``bench.py`` never write raw markup from user data.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clsx.errors import ClsxError, os_error
from clsx.io import durable
from clsx.io.outputs import check_output_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Readable on a laptop: one centred column, tables that scroll sideways rather than overflow.
CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1f2328; background: #f6f8fa; margin: 0; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 32px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1em; margin: 18px 0 6px; }
p.note { color: #57606a; margin: 4px 0 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card .value { font-size: 1.5em; font-weight: 600; }
.card .name { color: #57606a; font-size: 0.85em; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
img { max-width: 100%; height: auto; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 560px; overflow-wrap: anywhere; }
code { font-size: 0.92em; background: #f6f8fa; padding: 1px 4px; border-radius: 4px;
       overflow-wrap: anywhere; }
"""

# Figures are drawn at this many dots per inch: sharp enough for a laptop screen, ~50 KB each.
DPI = 110


def escape(value: object) -> str:
    """``value`` as text, safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 4) -> str:
    """A number as a report shows it: ints whole, floats to ``digits`` significant places,
    tiny or huge magnitudes in scientific notation, NaN and None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and not 1e-3 <= abs(value) < 1e6:
        return f"{value:.2e}"
    if abs(value) >= 10 ** digits:  # %g would switch to an exponent: round, with separators
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def percent(value: float | None) -> str:
    """A share as a percentage with two decimals (None: a dash)."""
    return "–" if value is None else f"{value:.2%}"


def table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], *,
          text_columns: Sequence[int] = ()) -> str:
    """An HTML table (no header row when ``header`` is None); numbers are right-aligned and
    formatted by :func:`number`, every cell escaped. ``text_columns`` (indexes) wrap long
    free text such as the inputs."""
    head = "" if header is None else "<thead><tr>" + "".join(
        f"<th>{escape(name)}</th>" for name in header) + "</tr></thead>"
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if isinstance(cell, (int, float)) and not isinstance(cell, bool):
                cells.append(f'<td class="num">{escape(number(cell))}</td>')
            else:
                kind = ' class="text"' if i in text_columns else ""
                cells.append(f"<td{kind}>{escape(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table>{head}<tbody>{"".join(body)}</tbody></table></div>'


def key_values(items: Mapping[str, Any]) -> str:
    """A two-column table of names and values, all left-aligned (numbers as :func:`number`
    writes them): a list of facts, not a column of figures."""
    return table(None, [(name, number(value)) for name, value in items.items()])


def cards(items: Mapping[str, str]) -> str:
    """Headline figures, large, side by side."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="value">{escape(value)}</div>'
        f'<div class="name">{escape(name)}</div></div>' for name, value in items.items()
    ) + "</div>"


def note(text: str) -> str:
    """A short grey explanation under a heading."""
    return f'<p class="note">{escape(text)}</p>'


def section(title: str, *parts: str) -> str:
    """A titled part of the page; ``parts`` are HTML fragments built by this module."""
    return f"<section><h2>{escape(title)}</h2>{''.join(parts)}</section>"


def figures(*images: str) -> str:
    """Images side by side where the screen is wide enough, stacked where it is not."""
    return f'<div class="figures">{"".join(images)}</div>'


def new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    """A matplotlib figure (inches) and its axes, drawn by the Agg renderer.

    matplotlib is imported here, not at module level, so that ``clsx --help`` and every
    command without ``--report`` never load it; a Figure with its own Agg canvas needs no
    pyplot, no global backend choice and no display.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ClsxError("--report needs matplotlib, which is missing from this Python "
                        "environment: pip install 'matplotlib>=3.8'") from exc
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, ncols)


def image(figure: Figure, alt: str) -> str:
    """``figure`` as an inline PNG ``<img>`` (a base64 ``data:`` URI: no file beside the
    page, nothing fetched), shown at its natural size or narrower."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    width = round(figure.get_figwidth() * DPI)
    return f'<img src="data:image/png;base64,{encoded}" alt="{escape(alt)}" width="{width}">'


def page(title: str, subtitle: str, sections: Iterable[str]) -> str:
    """The whole document: title, inline CSS and the sections in order."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{note(subtitle)}"
        + "\n".join(sections) + "</main></body></html>\n"
    )


def write_report(path: Path, document: str) -> None:
    """Write ``document`` to ``path`` atomically (a reader never sees half a page).

    An unwritable path (missing directory, no permission, a directory) is a
    :class:`~clsx.errors.ClsxError` naming it.
    """
    try:
        durable.write_file(Path(path), document)
    except OSError as exc:
        raise os_error("writing the report", path, exc) from exc


def check_report_path(path: Path) -> None:
    """Fail now, not after minutes of measuring, when ``path`` cannot become the report:
    its directory is missing or not writable, or ``path`` is a directory."""
    check_output_file(path, "report", "report.html", create_parents=False)
