"""A real S3-compatible server on 127.0.0.1 (moto's, from ``moto[server]``), for the tests
and benchmarks of object storage: clsx talks HTTP to it exactly as to S3.

Its objects live in this process's memory, so :meth:`S3Server.stop` followed by
:meth:`S3Server.start` (the same port) is a network outage, not a loss of data. Clients
need credentials from the environment, as on S3: :data:`FAKE_CREDENTIALS`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_REGION": "us-east-1"}


class S3Server:
    """moto's threaded server on a free port of 127.0.0.1, with a bucket ``bucket``."""

    bucket = "bucket"

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._server = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> tuple[str, str]:
        """The ``clsx`` options that point a command at this server."""
        return ("--storage-option", f"endpoint_override={self.endpoint}")

    def uri(self, key: str) -> str:
        """``s3://bucket/KEY``."""
        return f"s3://{self.bucket}/{key}"

    def filesystem(self):
        """A pyarrow S3 file system on this server (credentials from the environment)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                                 region=FAKE_CREDENTIALS["AWS_REGION"])

    def start(self) -> S3Server:
        """Serve (again) on this server's port."""
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port,
                                          verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving (the objects are kept for a later :meth:`start`)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def create_bucket(self, name: str | None = None) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint,
                              region_name=FAKE_CREDENTIALS["AWS_REGION"])
        client.create_bucket(Bucket=name or self.bucket)

    def user(self, name: str, policy: dict) -> dict[str, str]:
        """Create an IAM user allowed ``policy``; its credentials as environment variables."""
        import json

        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint,
                           region_name=FAKE_CREDENTIALS["AWS_REGION"])
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy",
                            PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    @contextmanager
    def authenticating(self) -> Iterator[None]:
        """Check every request's credentials and IAM permissions within the block (moto
        accepts any request otherwise)."""
        import urllib.request

        def reset(count: str) -> None:
            request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth",
                                             data=count.encode(), method="POST",
                                             headers={"Content-Type": "text/plain"})
            urllib.request.urlopen(request).close()

        reset("0")
        try:
            yield
        finally:
            reset("inf")
