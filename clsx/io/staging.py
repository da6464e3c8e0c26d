"""Build a directory under a hidden name and move it into place only when it is complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from clsx.errors import ClsxError
from clsx.io import durable
from clsx.io.storage import Location, local, one_line


def refuse_existing(target: Path | Location, overwrite: bool) -> None:
    """Refuse an existing ``target`` unless ``overwrite``: called before long work too, so
    that the refusal comes first (the staging checks again when it starts)."""
    if target.exists() and not overwrite:
        raise ClsxError(f"output {target} exists; pass --overwrite to replace it")


@contextmanager
def staged_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; rename it to ``target`` on success.

    On any exception (a failed parity gate, Ctrl-C) the staging directory is removed and
    ``target`` is left as it was. With ``overwrite`` an existing ``target`` is replaced.
    Its files are flushed to disk before the rename, so a ``target`` that exists is whole.
    """
    target = Path(target)
    refuse_existing(target, overwrite)
    if target.exists() and not target.is_dir():
        raise ClsxError(f"output {target} is a file; give a directory path")
    stage = target.with_name(f".{target.name}.clsx-{os.getpid()}.tmp")
    try:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
    except OSError as exc:
        raise ClsxError(f"cannot create {target}: {exc.strerror or exc}") from exc
    try:
        yield stage
        durable.sync_tree(stage)
        if target.exists():
            retired = target.with_name(f".{target.name}.clsx-{os.getpid()}.old")
            os.replace(target, retired)
            durable.rename(stage, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            durable.rename(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged_location(target: Location, overwrite: bool = False) -> Iterator[Location]:
    """:func:`staged_directory` for a local ``target``; on an object store, which has no
    rename, the staged files are copied (server side) into ``target`` at the end
    (:func:`publish_files`) and the stage is deleted."""
    if target.is_local:
        with staged_directory(target.local_path, overwrite) as stage:
            yield local(stage)
        return
    refuse_existing(target, overwrite)
    stage = target.with_name(f".{target.name}.clsx-{os.getpid()}.tmp")
    try:
        stage.delete_tree()
        yield stage
        publish_files(stage.files(), target)
    except OSError as exc:
        raise ClsxError(f"writing {target} failed: {one_line(exc)}") from exc
    finally:
        with suppress(OSError):  # unreachable now: a hidden leftover no reader of target sees
            stage.delete_tree()


def publish_files(files: list[Location], target: Location) -> None:
    """Make the object-store directory ``target`` hold copies of ``files`` (same names),
    copied server side; what ``target`` held before is deleted first."""
    target.delete_tree()
    for path in files:
        target.filesystem.copy_file(path.path, target.child(path.name).path)
