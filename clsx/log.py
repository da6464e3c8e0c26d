"""Progress and status lines from library code.

Library functions take a ``log`` callable instead of printing, so that only the CLI decides
where lines go (it passes ``lambda line: click.echo(line, err=True)``); scripts and tests
get silence by default.
"""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]


def silent(line: str) -> None:
    """The default ``log``: drop the line."""
