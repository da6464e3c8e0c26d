"""Where data lives: a local path or an object-store URI (``s3://``, ``gs://``, ``abfs://``,
``hdfs://``, ``file://``) as one :class:`Location` on a ``pyarrow.fs`` file system.

Credentials come from the standard places only (environment variables, ``~/.aws`` and the
like, instance metadata): a URI with credentials in it and ``--storage-option`` keys that
carry secrets are refused, so that no secret reaches a command line, a log, ``job.json`` or
a report. ``--storage-option key=value`` passes the rest (endpoint, region, timeouts,
retries), each mapped explicitly onto the file system's constructor; an unknown key is an
error that lists the known ones. Schemes pyarrow has no file system for go through fsspec
where it is installed.

Local paths keep the local file system's guarantees (fsync, rename, ``flock``; see
:mod:`clsx.io.durable`); an object store has no rename and no lock, and :mod:`clsx.batch.parts`
writes there with single PUTs instead.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from clsx.errors import ClsxError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

# Attempts per S3 request (the AWS SDK's standard strategy: exponential backoff with jitter)
# before an error reaches clsx; `--storage-option retries=N` changes it.
S3_ATTEMPTS = 5
SECRET_KEYS = ("access_key", "secret_key", "session_token", "access_token", "password",
               "account_key", "sas_token", "proxy_options")
CREDENTIALS_HINT = ("pass credentials through the environment (AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, ...) "
                    "or the provider's config files, never on the command line")


def _boolean(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not true or false")


# Per scheme: storage option -> how its text becomes the constructor argument of that name.
S3_OPTIONS: dict[str, Callable[[str], Any]] = {
    "endpoint_override": str, "region": str, "scheme": str, "anonymous": _boolean,
    "connect_timeout": float, "request_timeout": float, "retries": int,
    "force_virtual_addressing": _boolean, "tls_ca_file_path": str, "role_arn": str,
    "session_name": str, "external_id": str, "allow_delayed_open": _boolean,
}
GCS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "endpoint_override": str, "scheme": str, "anonymous": _boolean, "project_id": str,
    "retry_time_limit": float, "default_bucket_location": str,
}
OPTIONS_BY_SCHEME = {"s3": S3_OPTIONS, "gs": GCS_OPTIONS, "gcs": GCS_OPTIONS}


def check_options(pairs: Iterable[str]) -> dict[str, str]:
    """``key=value`` strings as a dict; a malformed pair or a secret is an error."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ClsxError(f"--storage-option {pair!r} is not key=value (e.g. "
                            "endpoint_override=http://127.0.0.1:9000)")
        if key in SECRET_KEYS:
            raise ClsxError(f"--storage-option {key} is not accepted: {CREDENTIALS_HINT}")
        options[key] = value
    return options


@dataclass(frozen=True)
class Location:
    """A file or directory ``path`` on ``filesystem``; ``uri`` is how users see it (a local
    path as given; an object-store URI never holds credentials)."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    def __str__(self) -> str:
        return self.uri

    @property
    def is_local(self) -> bool:
        """Whether this is on the local file system (fsync, rename and flock work)."""
        import pyarrow.fs as pafs

        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path:
        """The local path (only for a local location)."""
        assert self.is_local, self.uri
        return Path(self.uri)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    def child(self, name: str) -> Location:
        if self.is_local:
            return local(self.local_path / name)
        return Location(self.filesystem, f"{self.path.rstrip('/')}/{name}",
                        f"{self.uri.rstrip('/')}/{name}")

    def with_name(self, name: str) -> Location:
        if self.is_local:
            return local(self.local_path.with_name(name))
        return Location(self.filesystem, str(PurePosixPath(self.path).with_name(name)),
                        f"{self.uri.rstrip('/').rsplit('/', 1)[0]}/{name}")

    def key(self) -> str:
        """What ``job.json`` records: the absolute path, or the URI."""
        return str(self.local_path.resolve()) if self.is_local else self.uri

    def info(self) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.path)

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self.info().type == pafs.FileType.Directory

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self.info().type != pafs.FileType.NotFound

    def files(self, recursive: bool = False) -> list[Location]:
        """The files under this directory (none when it does not exist), sorted by path."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        # Relative to this directory; fsspec may write paths with a leading "/".
        base, shown = len(self.path.strip("/")), self.uri.rstrip("/")
        return [Location(self.filesystem, info.path, shown + info.path.strip("/")[base:])
                for info in sorted(self.filesystem.get_file_info(selector),
                                   key=lambda info: info.path)
                if info.type == pafs.FileType.File]

    def open(self) -> pa.NativeFile:
        """A random-access reader (what Parquet footers need)."""
        return self.filesystem.open_input_file(self.path)

    def read_bytes(self) -> bytes:
        with self.open() as handle:
            return handle.read()

    def write_bytes(self, data: bytes) -> None:
        """Replace this object-store file with ``data``, uploaded whole (:func:`upload`);
        local files are written through :mod:`clsx.io.durable` instead."""
        upload(data, self)

    def delete(self) -> None:
        """Delete this file; one that is already gone is no error."""
        import pyarrow.fs as pafs

        try:
            self.filesystem.delete_file(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            if self.info().type != pafs.FileType.NotFound:
                raise

    def delete_tree(self) -> None:
        """Delete this directory and everything under it; a missing one is no error."""
        if self.exists():
            self.filesystem.delete_dir(self.path)


def upload(data: bytes | pa.Buffer, target: Location) -> None:
    """Write ``data`` to ``target`` on an object store so that it appears whole or not at all.

    pyarrow completes an upload whenever its stream is closed, even after an exception, and
    cannot abort one (apache/arrow#40502); ``pyarrow.fs.copy_files`` even reports success
    for an upload that failed. So the stream here gets all of ``data`` in one call, with
    Ctrl-C and SIGTERM held back until it is closed: a request that fails makes the close
    fail (nothing is published), and a kill leaves an upload never completed, which the
    store does not show.
    """
    with _signals_deferred():
        stream = target.filesystem.open_output_stream(target.path)
        try:
            stream.write(data)
        finally:
            stream.close()


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block; they arrive when it ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def local(path: str | Path) -> Location:
    """A local path as a :class:`Location`."""
    return Location(_local_filesystem(), os.path.abspath(path), str(path))


@lru_cache(maxsize=1)
def _local_filesystem() -> pafs.FileSystem:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def is_uri(spec: str | Path) -> bool:
    """Whether ``spec`` names a location by URI (``scheme://...``) rather than a local path."""
    return "://" in str(spec)


def location(spec: str | Path, options: Iterable[str] = ()) -> Location:
    """The :class:`Location` a path or URI names; ``options`` are ``--storage-option``
    pairs, which only URIs of schemes that take them accept."""
    given = check_options(options)
    if not is_uri(spec):
        return local(spec)  # the options are for the URIs beside it (IN or OUT)
    uri = str(spec)
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise ClsxError(f"{parts.scheme}://{parts.hostname}{parts.path}: a URI must not hold "
                        f"credentials; {CREDENTIALS_HINT}")
    scheme = parts.scheme.lower()
    if scheme == "file":
        if given:
            raise ClsxError("--storage-option does not apply to file:// URIs")
        return local(parts.path)
    shown = uri.split("?", 1)[0]
    path = shown.split("://", 1)[1]
    if scheme not in OPTIONS_BY_SCHEME:
        if given:
            raise ClsxError(f"--storage-option applies to s3:// and gs:// URIs; for {scheme}:// "
                            "put the settings in the URI or the environment")
        return Location(*_from_uri(uri, scheme), shown)
    # Settings in the URI's query (s3://bucket/key?region=x) are storage options too.
    given.update(check_options(f"{key}={value}" for key, value in parse_qsl(parts.query)))
    filesystem = _filesystem(scheme, path.split("/", 1)[0], tuple(sorted(given.items())))
    return Location(filesystem, path, shown)


@lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str, options: tuple[tuple[str, str], ...]
                ) -> pafs.FileSystem:
    """The s3 or gs file system for ``bucket`` with ``options`` (made once, then reused)."""
    import pyarrow.fs as pafs

    known = OPTIONS_BY_SCHEME[scheme]
    arguments = {}
    for key, value in options:
        if key not in known:
            raise ClsxError(f"unknown --storage-option {key} for {scheme}://; known: "
                            f"{', '.join(sorted(known))}")
        try:
            arguments[key] = known[key](value)
        except ValueError as exc:
            raise ClsxError(f"--storage-option {key}={value}: {exc}") from None
    try:
        if scheme == "s3":
            return _s3(bucket, arguments)
        return pafs.GcsFileSystem(**arguments)
    except (OSError, ValueError) as exc:
        raise ClsxError(f"cannot reach {scheme}://{bucket}: {one_line(exc)}") from exc


def _from_uri(uri: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's file system for ``uri`` (abfs, hdfs, ...), else fsspec's, and the path."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise ClsxError(f"cannot open {uri.split('?', 1)[0]}: {one_line(exc)}") from exc
    try:
        import fsspec

        filesystem = fsspec.filesystem(scheme)
    except (ImportError, ValueError):
        raise ClsxError(f"{uri}: no file system for {scheme}:// (pyarrow has none, and "
                        "fsspec, where installed, has none either)") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem)), uri.split("://", 1)[1]


def _s3(bucket: str, arguments: dict[str, Any]) -> pafs.FileSystem:
    """An S3 file system; the endpoint defaults to AWS_ENDPOINT_URL(_S3) as in the AWS SDKs,
    and on AWS itself the region to the bucket's."""
    import pyarrow.fs as pafs

    endpoint = arguments.pop("endpoint_override", None) or os.environ.get(
        "AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, found, host = endpoint.partition("://")
        arguments["endpoint_override"] = host if found else endpoint
        if found:
            arguments.setdefault("scheme", scheme)
    elif "region" not in arguments and not os.environ.get("AWS_REGION"):
        arguments["region"] = pafs.resolve_s3_region(bucket)
    attempts = arguments.pop("retries", S3_ATTEMPTS)
    return pafs.S3FileSystem(
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts), **arguments)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (AWS errors span several)."""
    return " ".join(str(exc).split())
