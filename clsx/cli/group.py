"""The ``clsx`` command group: one ``Error: ...`` line for a :class:`ClsxError`, exit 130 on
Ctrl-C, the command line kept for reports."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from clsx.environment import environment
from clsx.errors import ClsxError

# For the duration of a command (a user's own settings win): model loading here never needs
# the hub's progress bars or advisory logging, and the fast tokenizer may use every core.
COMMAND_ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                       "TOKENIZERS_PARALLELISM": "true"}

COMMAND_LINE = "clsx.command_line"  # ctx.meta key


class ClsxGroup(click.Group):
    """Turns :class:`ClsxError` into ``Error: ...`` and exit 1, Ctrl-C into exit 130, and
    keeps the command line as typed (``ctx.meta[COMMAND_LINE]``) for reports."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        # Recorded before parsing, which consumes ``args``: click keeps no copy of them.
        command_line = shlex.join(["clsx", *args])
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[COMMAND_LINE] = command_line
        return ctx

    def invoke(self, ctx: click.Context):
        try:
            with environment(COMMAND_ENVIRONMENT, override=False):
                return super().invoke(ctx)
        except ClsxError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt as exc:
            click.echo(str(exc) or "Interrupted; no partial output was left behind.", err=True)
            sys.exit(130)


def report_context() -> dict[str, str]:
    """What every report says about its making: the command line and when it ran."""
    from datetime import datetime

    return {"command": click.get_current_context().meta.get(COMMAND_LINE, "clsx"),
            "created": datetime.now().astimezone().isoformat(timespec="seconds")}

