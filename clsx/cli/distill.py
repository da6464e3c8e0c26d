"""``clsx distill``: flags -> :class:`~clsx.train.config.DistillConfig` ->
:func:`clsx.train.distill.distill`, then both models' metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from clsx.cli.console import echo_decisions, echo_err
from clsx.cli.options import given, with_default
from clsx.cli.train import train_options
from clsx.inference.runners import BACKENDS
from clsx.train.augment import MOST_COPIES, TRANSFER_ROWS
from clsx.train.config import PROBLEM_ALIASES, DistillConfig


def _copies(context: click.Context, parameter: click.Parameter, value: str) -> int | None:
    """``--augment``: a whole number of copies, or None for auto."""
    if value == "auto":
        return None
    if not value.isdigit():
        raise click.BadParameter(f"{value!r} is neither a whole number >= 0 nor auto")
    return int(value)


@click.command("distill")
@click.option("--teacher", type=click.Path(path_type=Path), required=True,
              help="The teacher: any clsx model directory or export (its template and "
                   "long-text setting apply).")
@click.option("--student", required=True,
              help="The student's base model: a local HF directory, a hub id, or a bundled "
                   "alias (see `clsx models`); or static[:DIMS] (default 256): token vectors "
                   "of the teacher's encoder and a small head, no attention.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Unlabelled texts for the teacher to label: Parquet (a file, directory or "
                   "glob), JSONL or CSV; rows without text are dropped.")
@click.option("--train", "train_path", type=click.Path(path_type=Path),
              help="Gold-labelled rows (Parquet, JSONL or CSV), with the teacher's labels; "
                   "the student learns them mixed with the teacher's soft labels (--alpha).")
@click.option("--eval", "eval_path", type=click.Path(path_type=Path),
              help="Labelled data to keep the student's best epoch on and to report both "
                   "models' metrics and their agreement (default: a split of the teacher-"
                   "labelled rows, judged by agreement with the teacher).")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Directory for the student: a normal clsx model directory.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True),
              **with_default(DistillConfig, "temperature",
                             "Single-label: softens both distributions in the KL term."))
@click.option("--alpha", type=click.FloatRange(0, 1),
              **with_default(DistillConfig, "alpha",
                             "Weight of the gold labels' loss on the --train rows (the "
                             "teacher's soft labels get the rest)."))
@click.option("--teacher-backend", type=click.Choice(BACKENDS),
              **with_default(DistillConfig, "teacher_backend",
                             "Backend the teacher labels with (auto: its own format's)."))
@click.option("--problem-type", type=click.Choice(tuple(PROBLEM_ALIASES)),
              help="Must be the teacher's  [default: the teacher's]")
@click.option("--augment", default="auto", show_default=True, callback=_copies,
              metavar="COPIES|auto",
              help="Perturbed copies of each --data text (words dropped or swapped, short "
                   "windows) that the teacher labels too: the student learns more of the "
                   "teacher's function from the same data. auto: for a static student, "
                   f"enough for {TRANSFER_ROWS:,} rows in all (at most {MOST_COPIES} per "
                   "text); none for other students, whose training time grows with rows.")
@train_options()
def distill_command(teacher: Path, student: str, data: Path, train_path: Path | None,
                    eval_path: Path | None, output: Path, temperature: float | None,
                    alpha: float | None, teacher_backend: str | None,
                    problem_type: str | None, augment: int | None, **options) -> None:
    """Train a small student on a teacher's soft labels over unlabelled texts.

    The teacher labels --data (and --train) through batch-predict, keeping its probabilities;
    the student learns them: KL divergence at --temperature (single-label), BCE on the
    teacher's sigmoid outputs (multi-label), MSE on its values (regression), mixed with the
    gold labels of --train by --alpha. The student has the teacher's labels and problem type;
    its clsx.json records the teacher (path and fingerprint), the settings and, with --eval,
    both models' metrics and their agreement. Ctrl-C keeps the labels and checkpoints done;
    rerun the same command with --resume to continue.
    """
    from clsx.quality.metrics import format_report
    from clsx.train.distill import distill

    config = DistillConfig(teacher=teacher, data=data, student=student, output=output,
                           train=train_path, eval=eval_path, augment=augment,
                           training=given(options),
                           **given({"problem_type": problem_type, "temperature": temperature,
                                    "alpha": alpha, "teacher_backend": teacher_backend}))
    result = distill(config, log=echo_err)
    click.echo(format_report(result.train.best_metrics), err=True)
    echo_decisions(result.train.manifest, "the eval split")
    if result.evaluation:
        click.echo(_format_comparison(result.evaluation, eval_path), err=True)
    click.echo(f"Distilled in {result.train.seconds / 60:.1f} min from "
               f"{result.rows['unlabelled_rows']} unlabelled and {result.rows['gold_rows']} "
               f"gold rows (and {result.rows['augmented_rows']} --augment copies); wrote "
               f"{result.train.output}")


def _format_comparison(evaluation: dict[str, Any], source: Path) -> str:
    """Teacher and student metrics side by side, and how often they agree."""
    teacher, student = evaluation["teacher"], evaluation["student"]
    names = [name for name in teacher if name in student and not name.endswith("_uncalibrated")]
    lines = [f"On {source} ({evaluation['rows']} rows): {'teacher':>10} {'student':>10}"]
    lines += [f"  {name:<20} {teacher[name]:>10.4f} {student[name]:>10.4f}" for name in names
              if name != "rows"]
    if "agreement" in evaluation:
        lines.append(f"  the student decides as the teacher on {evaluation['agreement']:.2%} "
                     "of the rows")
    else:
        lines.append(f"  mean squared difference from the teacher's values: "
                     f"{evaluation['mse_to_teacher']:.4f}")
    return "\n".join(lines)

