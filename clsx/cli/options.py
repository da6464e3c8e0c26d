"""Options and helpers that several commands share.

Each option defaults to None where a config dataclass owns the default: ``--help`` shows
the dataclass field's default, and :func:`given` passes only what the user gave.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from clsx.cli.console import echo_err
from clsx.train.config import PROBLEM_ALIASES, TrainConfig

LABEL_SEPARATOR_HELP = "Multi-label: separator inside a string label column."
CLI_PROBLEM_TYPES = {full: alias for alias, full in PROBLEM_ALIASES.items()}  # for --help


def config_default(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config``.

    The config dataclass owns every default; options show it in --help and default to None,
    which means "not given: the dataclass decides".
    """
    for field in dataclasses.fields(config):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            raise ValueError(f"{config.__name__}.{name} has no default")
    raise ValueError(f"{config.__name__} has no field {name!r}")


def default_note(config: type, name: str) -> str:
    """``  [default: X]``, the end of an option's help: the dataclass field's default, as the
    user would type it (problem types by their CLI alias, an empty string quoted)."""
    value = config_default(config, name)
    shown = "''" if value == "" else CLI_PROBLEM_TYPES.get(value, value)
    return f"  [default: {shown}]"


def with_default(config: type, name: str, help_text: str = "") -> dict[str, Any]:
    """Option settings for a flag whose default is the dataclass field's: None when left
    out (so the dataclass applies it), shown in ``--help``."""
    return {"default": None, "help": (help_text + default_note(config, name)).lstrip()}


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave (None: left to the config dataclass's default)."""
    return {name: value for name, value in options.items() if value is not None}


threshold_option = click.option(
    "--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Multi-label: one decision threshold for every label (default: the per-label "
         "thresholds clsx train tuned on its eval split, stored in clsx.json; else 0.5).")


MODEL_URI_HELP = ("; or its URI on object storage (s3://, gs://, ...), fetched once per "
                  "machine into the clsx cache")


def model_option(what: str):
    """``--model/-m``: ``what`` (a model directory), or its URI on object storage; the
    command passes it through :func:`local_model_of`."""
    return click.option("--model", "-m", required=True, help=what + MODEL_URI_HELP + ".")


def local_model_of(options: dict[str, Any]) -> None:
    """Make ``options["model"]`` a local directory: a URI's copy in the clsx cache, fetched
    with ``options["storage_options"]`` unless this machine has it."""
    from clsx.artifacts.remote import local_model

    options["model"] = local_model(options["model"], options.get("storage_options", ()),
                                   echo_err)


storage_option = click.option(
    "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
    help="A setting of the object store that s3:// or gs:// URIs name, repeatable: "
         "endpoint_override=http://HOST:PORT, region=eu-west-1, retries=5, ... (README: "
         "Object storage). Credentials come from the environment or config files, never "
         "from here.")


def report_option(contents: str):
    """``--report FILE.html``: a self-contained HTML page of the command's results."""
    return click.option("--report", "report_path", type=click.Path(path_type=Path),
                        help=f"Write a self-contained HTML report ({contents}) to this file; "
                             "it opens offline in any browser.")


allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True,
    help="Accept pickle (.bin) weights, which can run code when loaded (default: safetensors "
         "only).")


def long_text_options(training: bool):
    """``--long-text``, ``--window-stride``, ``--aggregate``: set by train (into the manifest),
    overridden by eval and batch-predict (default there: the model's own setting)."""
    from clsx.artifacts.long_text import AGGREGATES, STRATEGIES

    models = "" if training else " (default: the model's, from its clsx.json)"
    options = [
        click.option("--long-text", type=click.Choice(STRATEGIES),
                     help="Texts over --max-length tokens: truncate (keep the start), head-tail "
                          "(keep the first quarter and last three quarters), window (classify "
                          f"overlapping windows, combine per text){models}."
                          + (default_note(TrainConfig, "long_text") if training else "")),
        click.option("--window-stride", type=click.IntRange(min=1),
                     help="window: text tokens between window starts"
                          f"{models or ' (default: 3/4 of a window)'}."),
        click.option("--aggregate", type=click.Choice(AGGREGATES),
                     help=f"window: combine the windows' logits by mean, max or majority "
                          f"vote{models}."
                          + (default_note(TrainConfig, "aggregate") if training else "")),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def comma_list(_ctx, _param, value: str | None) -> tuple[str, ...] | None:
    """A click callback: ``a, b,c`` as ``("a", "b", "c")``; None when the option is left out."""
    if value is None:
        return None
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if not items:
        raise click.BadParameter("give at least one name, separated by commas")
    return items

