"""Checks on where a command will write, made before it starts working.

A command that computes for minutes and then cannot write its result has wasted them: each
output path (a file such as ``--json`` or ``--report``, a directory such as export's OUT) is
checked here first, and a path that cannot become the output is one :class:`ClsxError`.
Local paths only; an object-store URI is checked by the writer that opens it.
"""

from __future__ import annotations

import os
from pathlib import Path

from clsx.errors import ClsxError


def check_output_file(path: Path, what: str, example: str, create_parents: bool = True
                      ) -> None:
    """Refuse a ``path`` that cannot become the file ``what`` (``report``, ``--json``...):
    a directory (``example`` names a file to give instead), or a parent that is a file or
    not writable. Missing parent directories are created by the writer, unless not
    ``create_parents``: then they are refused."""
    path = Path(path)
    if path.is_dir():
        raise ClsxError(f"{what} path {path} is a directory; give a file name such as "
                        f"{path / example}")
    directory = path.parent
    if not create_parents and not directory.exists():
        raise ClsxError(f"cannot write the {what} {path}: directory {directory} does not "
                        "exist; create it first")
    check_parent_directory(path, f"cannot write the {what} {path}")


def check_output_directory(path: Path, overwrite: bool = False, what: str = "output") -> None:
    """Refuse a ``path`` that cannot become the directory ``what``: one that exists (without
    ``overwrite``), a file, or one whose nearest existing parent is a file or not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ClsxError(f"{what} {path} is a file; give a directory path")
    if path.exists() and not overwrite:
        raise ClsxError(f"{what} {path} exists; pass --overwrite to replace it")
    check_parent_directory(path, f"cannot create {path}")


def check_parent_directory(path: Path, cannot: str) -> None:
    """Refuse a ``path`` whose nearest existing parent is a file or not writable (the
    message starts with ``cannot``); missing directories between are created later."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ClsxError(f"{cannot}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ClsxError(f"{cannot}: directory {parent} is not writable")
