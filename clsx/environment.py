"""Process-wide settings (environment variables) set for one block of work, then restored.

Nothing in clsx sets an environment variable at import time: a library that imports clsx
keeps its own environment, and a setting lasts only as long as the command that needs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def environment(values: Mapping[str, str], *, override: bool = True) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` inside the block and restore the previous state after.

    With ``override`` False a variable the user already set keeps the user's value.
    """
    previous = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if override or name not in os.environ:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
