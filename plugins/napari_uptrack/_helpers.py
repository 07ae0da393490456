"""Small Qt and matplotlib helpers shared by the widgets."""

from __future__ import annotations

import pandas as pd
from napari.utils.theme import get_theme
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem


def fill_table(table: QTableWidget, df: pd.DataFrame) -> None:
    """Replace the contents of ``table`` with ``df`` (read-only cells, whole-row selection).

    Row ``i`` of the table shows row ``i`` of ``df``; floats are shown with 4 significant digits.
    """
    table.clear()
    table.setRowCount(len(df))
    table.setColumnCount(len(df.columns))
    table.setHorizontalHeaderLabels([str(c) for c in df.columns])
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    for i, row in enumerate(df.itertuples(index=False)):
        for j, value in enumerate(row):
            table.setItem(i, j, QTableWidgetItem(f"{value:.4g}" if isinstance(value, float) else str(value)))
    table.resizeColumnsToContents()


def theme_rc(theme_name: str) -> dict:
    """Matplotlib settings that match a napari theme's colours (use with ``matplotlib.rc_context``)."""
    theme = get_theme(theme_name)
    background, text = theme.background.as_hex(), theme.text.as_hex()
    return {"figure.facecolor": background, "axes.facecolor": background, "savefig.facecolor": background,
            "axes.edgecolor": text, "axes.labelcolor": text, "text.color": text, "xtick.color": text,
            "ytick.color": text, "legend.facecolor": background, "legend.edgecolor": text, "font.size": 8}
