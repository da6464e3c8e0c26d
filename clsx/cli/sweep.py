"""``clsx sweep``: flags -> :class:`~clsx.train.sweep.SweepConfig` (a TrainConfig and a
search space) -> :func:`clsx.train.sweep.sweep`, then the best trial."""

from __future__ import annotations

from pathlib import Path

import click

from clsx.cli.console import echo_err
from clsx.cli.options import default_note, given, storage_option
from clsx.cli.train import train_data_options, train_options
from clsx.errors import ClsxError
from clsx.train.config import TrainConfig, refuse_idle_options
from clsx.train.search_space import PARAMETERS


@click.command("sweep")
@train_data_options
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Directory for the sweep: best/ (the best trial's model), trials/, "
                   "trials.md, trials.json, sweep.png and sweep.db.")
@click.option("--trials", type=click.IntRange(min=1),
              help="Search with Optuna's TPE sampler for this many trials in all (a resumed "
                   "sweep counts the earlier ones).")
@click.option("--grid", is_flag=True, help="Train every combination of the lists instead.")
@click.option("--lr", help="Learning rates: a list (1e-5,1e-4) or a range (1e-5:1e-3), "
                           "searched on a log scale."
                           + default_note(TrainConfig, "lr"))
@click.option("--epochs", help="Epochs: a list (2,3) or a range of whole numbers (1:4)."
                               + default_note(TrainConfig, "epochs"))
@click.option("--batch-size", help="Batch sizes: a list (8,16,32) or a range (8:32), log scale."
                                   + default_note(TrainConfig, "batch_size"))
@click.option("--lora-r", help="LoRA ranks: a list (8,64) or a range (4:64), log scale."
                               + default_note(TrainConfig, "lora_r"))
@click.option("--lora-alpha", help="LoRA alphas: a list (16,128) or a range (8:128), log scale."
                                   + default_note(TrainConfig, "lora_alpha"))
@click.option("--method", help="lora, full, or lora,full to try both."
                               + default_note(TrainConfig, "method"))
@click.option("--metric",
              help="The eval-split metric to optimise (the kept epoch's): accuracy, macro_f1, "
                   "micro_f1, ... or loss; mse, mae and loss are minimised.  [default: "
                   "accuracy; multi-label macro_f1; regression mse]")
@click.option("--prune/--no-prune", default=True, show_default=True,
              help="Stop a trial whose metric after an epoch is below the median of the "
                   "completed trials' after that epoch (once two trials have completed).")
@click.option("--resume", is_flag=True,
              help="Continue the sweep in --output (same settings); a trial it was running "
                   "runs again.")
@click.option("--overwrite", is_flag=True, help="Delete --output's sweep and start over.")
@train_options(leave_out=(*PARAMETERS, "resume", "overwrite"))
@storage_option
def sweep_command(output: Path, trials: int | None, grid: bool, metric: str | None,
                  prune: bool, resume: bool, overwrite: bool, **options) -> None:
    """Search learning rate, epochs, batch size, LoRA rank/alpha and method.

    Every trial is a `clsx train` run with the other options as given here. Each search
    flag takes a list (--lr 1e-5,1e-4) or a range (--lr 1e-5:1e-3); one value fixes it,
    and a flag left out keeps train's default. The best trial's model becomes OUTPUT/best;
    Ctrl-C or a kill leaves the sweep resumable with --resume.
    """
    from clsx.train.search_space import parse_space, settings_text
    from clsx.train.sweep import SweepConfig, sweep

    searched = {name: options.pop(name) for name in PARAMETERS}
    options["train"] = options.pop("train_path")
    options["eval"] = options.pop("eval_path")
    refuse_idle_options(given(options))
    config = SweepConfig(TrainConfig(output=output, **given(options)),
                         parse_space(given(searched)), trials=trials, grid=grid,
                         metric=metric, prune=prune, resume=resume, overwrite=overwrite)
    result = sweep(config, log=echo_err)
    if result.best is None:
        raise ClsxError(f"no trial completed (see {output / 'trials.md'})")
    best = result.best
    click.echo(f"Best: trial {best.number}, {result.metric} {best.value:.4f} "
               f"({settings_text(best.params)}); {len(result.rows)} trials, "
               f"{result.minutes:.1f} min of training; wrote {output / 'best'}")

