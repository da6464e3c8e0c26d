"""``clsx sweep``: hyper-parameter search over ``clsx train`` runs with Optuna.

Every trial is a normal training run into ``OUTPUT/trials/NNN``. Optuna's TPE sampler
(``--trials N``) or an enqueued grid (``--grid``) picks the settings; a median pruner stops
a trial whose metric after an epoch is below the median of the finished trials' at that
epoch. The study lives in ``OUTPUT/sweep.db`` (SQLite), written as each trial starts and
ends, so that a killed sweep continues with ``--resume``: a trial it left running is marked
failed and run again.

When a trial finishes, its directory keeps its record (``clsx.json``, ``metrics.json``);
the best trial's whole model directory becomes ``OUTPUT/best`` (hard links where the file
system has them, so no weights are copied). ``OUTPUT/trials.md`` and ``trials.json`` list
every trial; ``OUTPUT/sweep.png`` plots the metric against each searched option.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clsx.errors import ClsxError, os_error
from clsx.io import durable
from clsx.io.staging import staged_directory
from clsx.log import Log, silent
from clsx.train.config import TrainConfig
from clsx.train.search_space import Dimension, check_space, grid, settings_text
from clsx.train.sweep_report import TrialRow, sweep_plot, trials_markdown

STUDY = "clsx-sweep"
DATABASE = "sweep.db"
TRIALS = "trials"
BEST = "best"
RECORD = ("clsx.json", "metrics.json")  # what a finished trial's directory keeps
WEIGHTS_MARKER = "config.json"  # present while a trial directory still holds its model
# The median pruner judges a trial once this many trials have completed.
PRUNE_AFTER_TRIALS = 2
# TPE draws this share of the trials at random (at most 10, Optuna's default) before it
# models the results.
RANDOM_SHARE = 0.5
DEFAULT_METRICS = {"single_label_classification": "accuracy",
                   "multi_label_classification": "macro_f1", "regression": "mse"}
METRICS = {  # what the trainer's evaluation reports each epoch (besides ``loss``)
    "single_label_classification": ("accuracy", "macro_f1", "micro_f1", "weighted_f1",
                                    "macro_precision", "macro_recall"),
    "multi_label_classification": ("macro_f1", "micro_f1", "weighted_f1", "subset_accuracy"),
    "regression": ("mse", "mae", "pearson", "spearman"),
}
MINIMISED = ("loss", "mse", "mae")


@dataclass(frozen=True)
class SweepConfig:
    """One sweep. ``base`` holds the options every trial shares (its ``output`` is the
    sweep's OUTPUT); ``space`` the searched ones. ``trials``: TPE, this many finished
    trials in all (a resumed sweep counts the earlier ones); ``grid``: every combination."""

    base: TrainConfig
    space: Mapping[str, Dimension]
    trials: int | None = None
    grid: bool = False
    metric: str | None = None
    prune: bool = True
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.grid == (self.trials is not None):
            raise ClsxError("give --trials N (Optuna's TPE search) or --grid (every "
                            "combination of the lists), one of the two")
        if self.trials is not None and self.trials < 1:
            raise ClsxError(f"--trials must be >= 1, got {self.trials}")
        if not any(dimension.varies for dimension in self.space.values()):
            raise ClsxError("nothing to search: give --lr, --epochs, --batch-size, --lora-r, "
                            "--lora-alpha or --method a list (a,b) or a range (LOW:HIGH)")
        known = (*METRICS[self.base.problem_type], "loss")
        if self.metric_name not in known:
            raise ClsxError(f"--metric {self.metric!r} is not one of {', '.join(known)}")
        check_space(self.space, self.base)
        if self.grid:
            grid(self.space)  # fails on a range

    @property
    def output(self) -> Path:
        return self.base.output

    @property
    def metric_name(self) -> str:
        return self.metric or DEFAULT_METRICS[self.base.problem_type]

    @property
    def maximise(self) -> bool:
        return self.metric_name not in MINIMISED

    def settings(self) -> dict[str, Any]:
        """What a resumed sweep must share with the one it continues (JSON)."""
        fixed = {k: v for k, v in self.base.to_json().items()
                 if k not in (*self.space, "output", "resume", "overwrite")}
        return json.loads(json.dumps({
            "search": "grid" if self.grid else "tpe", "metric": self.metric_name,
            "prune": self.prune, "space": {n: d.text for n, d in self.space.items()},
            "fixed": fixed}))


@dataclass(frozen=True)
class SweepResult:
    """The best trial (None when none completed) and every trial's row."""

    output: Path
    metric: str
    best: TrialRow | None
    rows: list[TrialRow]

    @property
    def minutes(self) -> float:
        return sum(row.minutes or 0.0 for row in self.rows)


def sweep(config: SweepConfig, log: Log = silent) -> SweepResult:
    """Run (or continue) a sweep; ``log`` hears a line as each trial starts and ends."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for path in (config.base.train, config.base.eval):
        if path is not None and not Path(path).is_file():
            raise ClsxError(f"{path} does not exist")
    study = _open_study(config)
    _recover(study, config, log)
    while (trial := _next_trial(study, config)) is not None:
        _run_trial(study, trial, config, log)
        _publish_best(study, config)
        _write_table(study, config)
    _publish_best(study, config)
    rows = _write_table(study, config)
    if any(row.state == "complete" for row in rows):
        durable.write_file(config.output / "sweep.png", sweep_plot(
            rows, config.space, config.metric_name))
    best = next((row for row in rows if row.best), None)
    return SweepResult(config.output, config.metric_name, best, rows)


def _open_study(config: SweepConfig) -> Any:
    """The sweep's Optuna study: new, or (``--resume``) the one in OUTPUT/sweep.db."""
    import optuna

    output, database = config.output, config.output / DATABASE
    if config.resume:
        if not database.is_file():
            raise ClsxError(f"--resume: {output} holds no sweep (no {DATABASE}); start "
                            "without --resume")
    elif output.exists():
        if not config.overwrite:
            raise ClsxError(f"output {output} exists; pass --resume to continue its sweep or "
                            "--overwrite to start over")
        shutil.rmtree(output)
    try:
        durable.make_directory(output / TRIALS)
    except OSError as exc:
        raise os_error("creating", output, exc) from exc
    trials = config.trials or len(grid(config.space))
    sampler = optuna.samplers.TPESampler(
        seed=config.base.seed, n_startup_trials=max(1, min(10, round(trials * RANDOM_SHARE))))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS)
              if config.prune else optuna.pruners.NopPruner())
    study = optuna.create_study(
        storage=f"sqlite:///{database.resolve()}", study_name=STUDY, sampler=sampler,
        pruner=pruner, direction="maximize" if config.maximise else "minimize",
        load_if_exists=True)
    settings, stored = config.settings(), study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        raise ClsxError(f"--resume: {output} was swept with other settings "
                        f"({_differences(stored, settings)}); give the same ones, or start "
                        "a new sweep in another --output")
    return study


def _differences(before: dict[str, Any], now: dict[str, Any]) -> str:
    """The settings that differ, as ``name X then, Y now`` (searched and fixed alike)."""
    def flat(settings: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in settings.items() if not isinstance(v, dict)},
                **settings["space"], **settings["fixed"]}

    old, new = flat(before), flat(now)
    changed = [f"{name} {old.get(name, 'not searched')} then, {new.get(name, 'not searched')} "
               f"now" for name in dict.fromkeys([*old, *new]) if old.get(name) != new.get(name)]
    return "; ".join(changed[:3]) + (f"; {len(changed) - 3} more" if len(changed) > 3 else "")


def _recover(study: Any, config: SweepConfig, log: Log) -> None:
    """Fail the trials a killed sweep left running and queue their settings again; queue
    the grid's missing combinations; delete what unfinished trials left on disk."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log(f"trial {trial.number} was interrupted; it runs again")
        study.set_user_attr(f"interrupted_{trial.number}", True)
        study.tell(trial.number, state=TrialState.FAIL)
        if not config.grid:
            study.enqueue_trial(trial.params)
    if config.grid:
        covered = [t.params for t in study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING))]
        for params in grid(config.space):
            if params not in covered:
                study.enqueue_trial(params)
    finished = {f"{t.number:03d}" for t in study.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE,))}
    leftovers = [path for path in (config.output / TRIALS).iterdir()
                 if path.name.lstrip(".").split(".")[0] not in finished]
    # A model directory being staged when the sweep was killed.
    leftovers += config.output.glob(f".{BEST}.clsx-*")
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def _next_trial(study: Any, config: SweepConfig) -> Any | None:
    """The next trial to run (a queued one first), or None when the sweep is done."""
    from optuna.trial import TrialState

    if config.grid:
        done = not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    else:
        done = _finished(study) >= config.trials
    return None if done else study.ask()


def _finished(study: Any) -> int:
    """Trials that ran to their end: completed, pruned, or failed other than by a kill."""
    from optuna.trial import TrialState

    interrupted = study.user_attrs
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and f"interrupted_{t.number}" not in interrupted))


def _run_trial(study: Any, trial: Any, config: SweepConfig, log: Log) -> None:
    """Train one trial and tell the study how it went (complete, pruned or failed)."""
    import optuna
    from optuna.trial import TrialState

    from clsx.train.trainer import train, work_directory

    params = {name: dimension.suggest(trial) for name, dimension in config.space.items()}
    directory = config.output / TRIALS / f"{trial.number:03d}"
    trial_config = dataclasses.replace(config.base, output=directory, resume=False,
                                       overwrite=False, **params)
    total = f" of {config.trials}" if config.trials else f" of {len(grid(config.space))}"
    log(f"trial {trial.number} ({_finished(study) + 1}{total}): {settings_text(params)} ...")
    try:
        result = train(trial_config, log, callbacks=[_pruning_callback(trial, config.metric_name)])
    except optuna.TrialPruned as pruned:
        shutil.rmtree(work_directory(directory), ignore_errors=True)
        frozen = study.tell(trial, state=TrialState.PRUNED)
        log(f"trial {trial.number}: pruned after {pruned} ({config.metric_name} "
            f"{frozen.value:.4f}) in {_minutes(frozen):.1f} min")
        return
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"Interrupted in trial {trial.number}; continue the sweep with "
                                "the same command and --resume (that trial runs again).") from None
    except Exception as exc:
        trial.set_user_attr("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        gc.collect()
    value = result.best_metrics.get(config.metric_name, math.nan)
    if not math.isfinite(value):
        trial.set_user_attr("error", f"{config.metric_name} is {value}")
        frozen = study.tell(trial, state=TrialState.FAIL)
        log(f"trial {trial.number}: failed, {config.metric_name} is {value}")
        return
    frozen = study.tell(trial, value)
    best = study.best_trial
    log(f"trial {trial.number}: {config.metric_name} {value:.4f} in {_minutes(frozen):.1f} min; "
        f"best so far trial {best.number} ({best.value:.4f})")


def _pruning_callback(trial: Any, metric: str) -> Any:
    """A Trainer callback that reports each epoch's metric to the trial and raises
    ``optuna.TrialPruned`` ("epoch N") when the pruner says stop."""
    import optuna
    from transformers import TrainerCallback

    class Prune(TrainerCallback):
        evaluations = 0

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.evaluations += 1
            value = (metrics or {}).get(f"eval_{metric}")
            if value is None or not math.isfinite(value):
                return control
            trial.report(value, self.evaluations)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {self.evaluations}")
            return control

    return Prune()


def _minutes(trial: Any) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds() / 60


def _best_number(study: Any) -> int | None:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial.number


def _publish_best(study: Any, config: SweepConfig) -> None:
    """Make the best completed trial's model OUTPUT/best, and cut every completed trial's
    directory down to its record. Safe to repeat after a kill at any point: a trial
    directory loses its weights (the marker first) only after OUTPUT/best holds them."""
    best = _best_number(study)
    for directory in sorted((config.output / TRIALS).iterdir()):
        if directory.name.startswith(".") or not (directory / WEIGHTS_MARKER).exists():
            continue
        if best is not None and directory.name == f"{best:03d}":
            with staged_directory(config.output / BEST, overwrite=True) as stage:
                shutil.copytree(directory, stage, dirs_exist_ok=True, copy_function=_link)
        (directory / WEIGHTS_MARKER).unlink()
        for path in directory.iterdir():
            if path.name not in RECORD:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def _link(source: str, target: str) -> None:
    """Hard-link ``source`` at ``target``; copy it where the file system cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_table(study: Any, config: SweepConfig) -> list[TrialRow]:
    """Every trial as a row, written to OUTPUT/trials.json and trials.md."""
    best = _best_number(study)
    interrupted = study.user_attrs
    rows = [TrialRow(
        number=t.number,
        state="interrupted" if f"interrupted_{t.number}" in interrupted else t.state.name.lower(),
        params={name: t.params[name] for name in config.space if name in t.params},
        value=t.value,
        epochs=[t.intermediate_values[step] for step in sorted(t.intermediate_values)],
        minutes=round(_minutes(t), 2) if t.datetime_complete else None,
        best=t.number == best,
        note=t.user_attrs.get("error", ""),
    ) for t in study.get_trials(deepcopy=False) if t.state.name != "WAITING"]
    summary = {"metric": config.metric_name, "direction": "maximize" if config.maximise
               else "minimize", "best_trial": best, "settings": config.settings(),
               "trials": [dataclasses.asdict(row) for row in rows]}
    durable.write_file(config.output / "trials.json", json.dumps(summary, indent=2) + "\n")
    durable.write_file(config.output / "trials.md", trials_markdown(
        rows, config.space, config.metric_name))
    return rows
