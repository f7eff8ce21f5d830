"""Turn figures and row tables into what widgets show: PNG bytes and HTML."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure


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
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in columns) + "</tr>" for row in shown
    )
    note = f"<p><i>{len(rows) - len(shown)} more rows not shown</i></p>" if len(shown) < len(rows) else ""
    return f'<table class="vitkit-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}'
