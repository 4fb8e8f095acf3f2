"""How an exception is shown in a one-line error."""

from __future__ import annotations


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of ``exc``'s message (torch's run over several), or ``default``
    (the exception's type name unless given) when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else (default or type(exc).__name__)
