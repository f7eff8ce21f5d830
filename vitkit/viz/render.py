"""Turn figures and row tables into what widgets show: PNG bytes and HTML."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass

from IPython.display import HTML, Image
from matplotlib.figure import Figure

CELL = 'style="padding:1px 8px;border-bottom:1px solid #ddd;text-align:left"'


def figure_png(fig: Figure) -> bytes:
    """``fig`` rendered as PNG bytes at its own dpi (Agg; no pyplot, so no figure is kept alive)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def html_table(rows: Sequence[Mapping[str, object]], *, max_rows: int | None = None) -> str:
    """A plain HTML table of ``rows`` (dicts with the same keys), columns in the first row's order.

    With ``max_rows`` the table shows the first ``max_rows`` rows and says how many it left out.
    """
    if not rows:
        return "<p><i>no rows</i></p>"
    columns = list(rows[0])
    shown = rows if max_rows is None else rows[:max_rows]
    head = "".join(f"<th {CELL}>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td {CELL}>{html.escape(str(row[c]))}</td>" for c in columns) + "</tr>" for row in shown
    )
    note = f"<p><i>{len(rows) - len(shown)} more rows not shown</i></p>" if len(shown) < len(rows) else ""
    return f'<table class="vitkit-table" style="border-collapse:collapse;font-size:12px"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}'


def show(fig: Figure):
    """``fig`` as an IPython PNG image: displays the same in every front end and in nbclient,
    whatever matplotlib backend the kernel has (these figures are built without pyplot)."""
    return Image(data=figure_png(fig), format="png")


def show_table(rows: Sequence[Mapping[str, object]] | Sequence[object]):
    """``rows`` (dicts, or dataclass instances) as an IPython HTML table."""
    dicts = [asdict(r) if is_dataclass(r) else dict(r) for r in rows]
    return HTML(html_table(dicts))
