"""Writes that survive a crash or a power cut: a file is either absent, the old one, or whole.

A rename alone is not enough: after a power cut the new name can point at a file whose data
never reached the disk (zero bytes, or stale blocks), and the rename itself can be lost
while later work that relied on it was kept. So every writer here (1) writes under a hidden
temporary name in the same directory (a rename is atomic only within one file system),
(2) fsyncs the file, (3) renames it with ``os.replace``, and (4) fsyncs the directory, which
makes the rename itself durable.

Errors are plain :class:`OSError`; each caller knows which output it was writing and turns
them into its own message.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

# Some file systems (certain FUSE, network and Windows mounts) cannot fsync a directory; the
# rename is then as durable as the file system makes it, which is no reason to fail a write.
_UNSYNCABLE_DIRECTORY = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF,
                         errno.EACCES, errno.EPERM}


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data and metadata to the disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_directory(path: Path) -> None:
    """Flush ``path``'s entries (creations, renames, deletions) to the disk, where the file
    system can."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _UNSYNCABLE_DIRECTORY:
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError as exc:
        if exc.errno not in _UNSYNCABLE_DIRECTORY:
            raise
    finally:
        os.close(descriptor)


def sync_tree(directory: Path) -> None:
    """Flush every file and directory under ``directory`` (itself included) to the disk, so
    that renaming it into place publishes complete files."""
    for root, _, files in os.walk(directory):
        for name in files:
            if not (Path(root) / name).is_symlink():  # its target is not this tree's to sync
                fsync_file(Path(root) / name)
        fsync_directory(Path(root))


def rename(temporary: Path, target: Path) -> None:
    """Durably rename an already written (and closed) ``temporary`` file to ``target``.

    ``temporary`` must be in the same directory as ``target``. A directory is accepted too:
    its entries are flushed, not the files inside it (see :func:`sync_tree`).
    """
    if temporary.is_dir():
        fsync_directory(temporary)
    else:
        fsync_file(temporary)
    os.replace(temporary, target)
    fsync_directory(target.parent)


def make_directory(path: Path) -> None:
    """Create ``path`` (and missing parents) so that the new entries survive a crash."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    if missing:
        missing[0].mkdir(parents=True, exist_ok=True)
    for created in missing:
        fsync_directory(created.parent)


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this call, for a file about to become it."""
    return path.with_name(f".{path.name}.clsx-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_file(path: Path, data: str | bytes) -> None:
    """Atomically and durably replace ``path`` with ``data`` (text is written as UTF-8).

    Readers see the old file or the new one, never a part; the temporary file is removed if
    anything fails. The new file gets the usual permissions (0666 less the umask).
    """
    payload = data.encode() if isinstance(data, str) else data
    temporary = temporary_name(path)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(descriptor, view):]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
