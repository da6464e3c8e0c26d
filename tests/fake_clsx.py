"""``python -m tests.fake_clsx [--fake-delay SECONDS] ARGS...``: the clsx command line with
:class:`tests.fakes.FakeRunner` as its torch backend.

For the tests that must run clsx in a process of its own (``tests/test_resume.py`` kills it
with SIGKILL), where the ``fake_runner`` fixture cannot reach. Run it from the repository
root, so that ``tests`` and this checkout's ``clsx`` are the ones imported. ``--fake-delay``
(first, before clsx's own arguments) sleeps that long per batch, so that a kill lands in the
middle of a run rather than after it.
"""

from __future__ import annotations

import sys

from clsx.cli import main as clsx_main
from clsx.inference.runners import RUNNERS
from tests.fakes import FAKE_BACKEND, FAKE_RUNNER, FakeRunner

DELAY_OPTION = "--fake-delay"


def main(argv: list[str]) -> None:
    """Register the fake, then run clsx on ``argv`` (minus this module's own option)."""
    if argv[:1] == [DELAY_OPTION]:
        FakeRunner.delay_s = float(argv[1])
        argv = argv[2:]
    RUNNERS[FAKE_BACKEND] = FAKE_RUNNER
    clsx_main(argv, prog_name="clsx")


if __name__ == "__main__":
    main(sys.argv[1:])
