"""Plain text for the terminal: tables sized to their content, and strangers' names quoted for
error lines.  No dependency."""

from __future__ import annotations


def table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        out = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def quoted(name: str, limit: int = 120) -> str:
    """A name from a file someone else made, quoted and cut short for a one-line error."""
    text = repr(name)
    return text if len(text) <= limit else text[:limit] + "...'"
