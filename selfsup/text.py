"""Text from files, made safe to show: no terminal escapes, no markup, no broken tables.

Names in reports (datasets, runs, classes) come from files anyone may have
written. In a terminal an escape sequence could rewrite the screen; in rich
a ``[link=...]`` would be read as markup; in Markdown a ``|`` would split a
table cell. Every writer of such text goes through these functions.
"""

from __future__ import annotations

import re

# C0 and C1 control characters (ESC among them) and DEL; tabs and newlines too:
# a cell or a name is one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: object) -> str:
    """``value`` as one line without control characters (each shown as ``?``)."""
    return _CONTROL.sub("?", str(value))


def markdown_cell(value: object) -> str:
    """``value`` for a Markdown table cell: printable, with ``|``, ``\\`` and HTML escaped."""
    text = printable(value).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


# The one Markdown table writer of the package and of bench/. Not tabulate's
# "github" format: it leaves a "|" inside a cell unescaped (a dataset or run
# name could split the table), and bench/ prints rows one at a time, as they
# are measured, which a whole-table formatter cannot.
def markdown_row(cells: list[object]) -> str:
    """One table row, every cell escaped."""
    return "| " + " | ".join(map(markdown_cell, cells)) + " |"


def markdown_header(header: list[str]) -> list[str]:
    """A table's header row and its separator."""
    return [markdown_row(list(header)), "|" + "---|" * len(header)]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines, every cell escaped."""
    return [*markdown_header(header), *(markdown_row(list(row)) for row in rows)]
