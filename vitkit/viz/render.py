"""Figures and row tables as PNG bytes and HTML, and the widget pieces the views share."""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import TypeVar

import ipywidgets as widgets
from IPython.display import HTML, Image
from matplotlib.figure import Figure

W = TypeVar("W", bound=widgets.Widget)
CELL = 'style="padding:1px 8px;border-bottom:1px solid #ddd;text-align:left"'


def figure_png(fig: Figure) -> bytes:
    """``fig`` rendered as PNG bytes at its own dpi (Agg; no pyplot, so no figure is kept alive)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def html_table(rows: Sequence[Mapping[str, object]], *, max_rows: int | None = None) -> str:
    """``rows`` (dicts with the same keys) as an HTML table; beyond ``max_rows`` rows, a count of the rest."""
    if not rows:
        return "<p><i>no rows</i></p>"
    columns = list(rows[0])
    shown = rows if max_rows is None else rows[:max_rows]
    head = "".join(f"<th {CELL}>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td {CELL}>{html.escape(cell_text(row[c]))}</td>" for c in columns) + "</tr>" for row in shown
    )
    note = f"<p><i>{len(rows) - len(shown)} more rows not shown</i></p>" if len(shown) < len(rows) else ""
    # A wide table scrolls sideways in its own box instead of being cut at the notebook's edge.
    table = '<table class="vitkit-table" style="border-collapse:collapse;font-size:12px;white-space:nowrap">'
    return f"<div style='overflow-x:auto'>{table}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{note}"


def cell_text(value: object) -> str:
    """A table cell: floats to the digits a reader compares (three significant, thousands grouped), else ``str``."""
    if not isinstance(value, float):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.3g}"


def show(fig: Figure) -> Image:
    """``fig`` as an IPython PNG image, whatever matplotlib backend the kernel has."""
    return Image(data=figure_png(fig), format="png")


def show_table(rows: Sequence[Mapping[str, object]] | Sequence[object]) -> HTML:
    """``rows`` (dicts, or dataclass instances) as an IPython HTML table."""
    return HTML(html_table([asdict(r) if is_dataclass(r) else dict(r) for r in rows]))


def control(cls: type[W], label: str, value: object, label_width: str, width: str | None = None, **kwargs: object) -> W:
    """A ``cls`` control showing ``label`` in ``label_width``, the whole ``width`` wide (None: its own)."""
    if width is not None:
        kwargs["layout"] = widgets.Layout(width=width)
    return cls(value=value, description=label, style={"description_width": label_width}, **kwargs)


def slider(cls: type[W], label: str, value: object, lo: float, hi: float, step: float, label_width: str,
           width: str) -> W:
    """A ``cls`` slider that changes its value once, when let go (not once per pixel moved)."""
    return control(cls, label, value, label_width, width, min=lo, max=hi, step=step, continuous_update=False)


def control_grid(controls: Iterable[widgets.Widget], columns: str, on_change: Callable[[], object]) -> widgets.GridBox:
    """``controls`` in a grid of CSS ``columns``, each calling ``on_change()`` when its value changes."""
    controls = list(controls)
    for c in controls:
        c.observe(lambda _: on_change(), names="value")
    return widgets.GridBox(controls, layout=widgets.Layout(grid_template_columns=columns))


def png_widget() -> widgets.Image:
    """An empty PNG image as wide as the view at most."""
    return widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))


def scroll_html(max_height: str) -> widgets.HTML:
    """An empty HTML box that scrolls beyond ``max_height``."""
    return widgets.HTML(layout=widgets.Layout(max_height=max_height, overflow="auto"))
