"""Model directories on object storage (``--model s3://bucket/models/sst2``): fetched once per
machine into the clsx cache, so that every node of a cluster finds the model where it runs.

A model URI is listed (every file's path, size and modification time); that listing is the
copy's key (``models/<key>/`` under the clsx cache), so a model changed on the store is
fetched anew and an unchanged one never again. The files are downloaded into a staging
directory, each checked against its listed size, and renamed into place whole: a copy that
exists is complete. The copy is then an ordinary model directory (its manifest, fingerprint
and parity checks apply as to any other).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from clsx.artifacts.bundled import cache_dir
from clsx.errors import ClsxError
from clsx.io.staging import staged_directory
from clsx.io.storage import Location, is_uri, location, one_line
from clsx.log import Log, silent

MODELS = "models"  # the copies' directory under the clsx cache
CHUNK = 8 << 20


def local_model(spec: str | Path, storage_options: Iterable[str] = (), log: Log = silent
                ) -> Path:
    """``spec`` as a local model directory: a path as it is; a URI (``s3://``, ``gs://``,
    ...) fetched into the clsx cache unless this machine has it already."""
    if not is_uri(spec):
        return Path(spec)
    source = location(spec, tuple(storage_options))
    if source.is_local:  # file://
        return source.local_path
    try:
        files = source.files(recursive=True)
        listing = [(_relative(source, file), file.info()) for file in files]
    except OSError as exc:
        raise ClsxError(f"cannot read the model {spec}: {one_line(exc)}") from exc
    if not files:
        raise ClsxError(f"{spec} holds no files; give the directory a clsx model was saved "
                        "to (clsx.json, config.json, the weights)")
    key = hashlib.sha256(json.dumps(
        [(name, info.size, str(info.mtime)) for name, info in listing]).encode()).hexdigest()
    target = cache_dir() / MODELS / key[:24]
    if target.is_dir():
        return target
    size = sum(info.size or 0 for _, info in listing)
    log(f"fetching {spec} ({len(files)} files, {size / 1e6:.1f} MB) into {target}")
    with staged_directory(target, overwrite=True) as stage:
        for file, (name, info) in zip(files, listing, strict=True):
            _download(file, stage / name, info.size)
    return target


def _relative(source: Location, file: Location) -> str:
    """``file``'s path under the directory ``source``."""
    return file.uri[len(source.uri.rstrip("/")) + 1:]


def _download(file: Location, path: Path, size: int | None) -> None:
    """Copy ``file`` to ``path``, checked against its listed ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with file.open() as reader, path.open("wb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK)
    except OSError as exc:
        raise ClsxError(f"cannot fetch {file}: {one_line(exc)}") from exc
    if size is not None and path.stat().st_size != size:
        raise ClsxError(f"fetching {file} gave {path.stat().st_size} bytes, not the {size} "
                        "listed; the model changed while it was fetched? Run again")
