"""The one exception type for mistakes a user can fix; the CLI prints it as one line."""


class ClsxError(Exception):
    """A user-facing error: bad input, a missing file, a failed gate.

    The message is a single sentence naming the cause and, where there is one, the fix.
    The CLI turns it into ``Error: <message>`` and exit code 1, never a traceback.
    """


def os_error(action: str, path: object, exc: OSError) -> ClsxError:
    """A one-line error for a failed file operation (disk full, permissions, ...)."""
    return ClsxError(f"{action} {path} failed: {exc.strerror or exc}")
