"""What the commands say while and after they run: status lines on stderr, a progress bar,
the decision settings a model was given."""

from __future__ import annotations

import sys
from typing import Any

import click


def echo_err(line: str) -> None:
    """The ``log`` the commands hand to library code: status lines on stderr."""
    click.echo(line, err=True)


class ProgressBar:
    """A tqdm bar on stderr that the library drives through ``progress(done, total)``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit=" rows", file=sys.stderr,
                            mininterval=1.0, dynamic_ncols=True, smoothing=0.1)
        else:
            self.bar.update(done - self.bar.n)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()


def echo_decisions(manifest: Any, source: str) -> None:
    """Report a manifest's fitted temperatures and tuned thresholds, fitted on ``source``."""
    def per_label(values: tuple[float, ...]) -> str:
        return ", ".join(f"{label} {value:g}"
                         for label, value in zip(manifest.labels, values, strict=True))

    if manifest.temperatures:
        fitted = (per_label(manifest.temperatures) if len(manifest.temperatures) > 1
                  else f"{manifest.temperatures[0]:g}")
        click.echo(f"Temperature scaling (fitted on {source}, stored in clsx.json): {fitted}",
                   err=True)
    if manifest.thresholds:
        calibrated = " calibrated probabilities of" if manifest.temperatures else ""
        click.echo(f"Per-label thresholds (tuned on the{calibrated} {source}, stored in "
                   f"clsx.json): {per_label(manifest.thresholds)}", err=True)

