"""The files ``clsx eval`` and ``clsx bench`` write besides the table they print: ``--json``,
``--errors``, ``--predictions`` and ``--report``, each checked before the work starts and
written in one place.

Light on purpose: pyarrow, matplotlib and the report builders are imported only when a file
is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clsx.errors import os_error
from clsx.io import durable
from clsx.io.outputs import check_output_file
from clsx.log import Log, silent
from clsx.reports.page import check_report_path, write_report

if TYPE_CHECKING:
    from clsx.evaluation.bench import BenchRow
    from clsx.evaluation.config import BenchConfig
    from clsx.evaluation.evaluate import EvalResult


@dataclass(frozen=True)
class OutputFiles:
    """Where a command writes its results as files; None: not written.

    ``json``: the metrics (eval) or measurements (bench); ``errors``: eval's misclassified
    rows and ``predictions`` all its rows, as Parquet; ``report``: a self-contained HTML page.
    """

    json: Path | None = None
    errors: Path | None = None
    predictions: Path | None = None
    report: Path | None = None

    def check(self) -> None:
        """Refuse, before any work, a path that cannot become its file (see
        :mod:`clsx.io.outputs`)."""
        for path, what, example in ((self.json, "--json", "metrics.json"),
                                    (self.errors, "--errors", "errors.parquet"),
                                    (self.predictions, "--predictions", "predictions.parquet")):
            if path is not None:
                check_output_file(path, what, example)
        if self.report is not None:
            check_report_path(self.report)


def write_eval_outputs(result: EvalResult, files: OutputFiles, context: Mapping[str, str],
                       log: Log = silent) -> None:
    """Write ``clsx eval``'s files; ``context`` (command line, time) goes into the report."""
    from clsx.evaluation.evaluate import errors_table, write_json
    from clsx.io.parquet import write_table

    if files.json is not None:
        _write(files.json, lambda path: write_json(result.metrics, path))
    if files.errors is not None:
        errors = errors_table(result.predictions)
        write_table(errors, files.errors)
        log(f"Wrote {errors.num_rows} misclassified rows to {files.errors}")
    if files.predictions is not None:
        write_table(result.predictions, files.predictions)
        log(f"Wrote {result.predictions.num_rows} rows to {files.predictions}")
    if files.report is not None:
        from clsx.inference.hardware import machine_description
        from clsx.reports.eval import eval_report

        _report(files.report, eval_report(result, {**context,
                                                   "machine": machine_description()}), log)


def write_bench_outputs(results: Sequence[BenchRow], config: BenchConfig, files: OutputFiles,
                        context: Mapping[str, str], log: Log = silent) -> None:
    """Write ``clsx bench``'s files; ``context`` (command line, time) goes into the report."""
    if files.json is not None:
        from clsx.evaluation.bench import write_json
        from clsx.inference.hardware import machine_description

        _write(files.json, lambda path: write_json(
            results, path, model=str(config.model), data=str(config.data),
            rows=results[0].rows, machine=machine_description()))
        log(f"Wrote {files.json}")
    if files.report is not None:
        from clsx.inference.hardware import machine_facts
        from clsx.reports.bench import bench_report

        document = bench_report(results, {**context, "model": str(config.model),
                                          "data": str(config.data)}, machine_facts())
        _report(files.report, document, log)


def _write(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(path)`` after creating ``path``'s missing directories, as the Parquet
    writer does; a failure is one line naming the file."""
    try:
        durable.make_directory(path.parent)
        write(path)
    except OSError as exc:
        raise os_error("writing", path, exc) from exc


def _report(path: Path, document: str, log: Log) -> None:
    write_report(path, document)
    log(f"Wrote {path}")
