"""What a batch-predict run did: the summary line the CLI prints last, and what
:func:`clsx.batch_predict` returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clsx.inference.classifier import Counts


@dataclass(frozen=True)
class Summary:
    """What a batch-predict run did, for the final one-line report.

    ``counts`` is None where rows were not counted one by one (an output already complete).
    """

    rows: int
    seconds: float
    backend: str
    output: str | Path
    counts: Counts | None = None
    resumed_rows: int = 0
    already_complete: bool = False
    recheck_margin: float | None = None  # None: the run did not re-check
    fallback_margin: float | None = None  # None: no fallback model
    fallback_recheck_margin: float | None = None  # None: the fallback model does not re-check

    def line(self) -> str:
        if self.already_complete:
            return f"{self.output} is already complete; nothing to do"
        seconds = max(self.seconds, 1e-9)
        if self.counts is None:
            return (f"{self.rows} rows in {self.seconds:.1f} s: {self.rows / seconds:.1f} "
                    f"rows/s, backend {self.backend}; wrote {self.output}")
        resumed = f" (continued after {self.resumed_rows} rows)" if self.resumed_rows else ""
        return (
            f"{self.rows} rows in {self.seconds:.1f} s{resumed}: {self.rows / seconds:.1f} "
            f"rows/s, {self.counts.tokens / seconds:.0f} tokens/s, backend {self.backend}; "
            f"{self.counts.nulls} null texts, {self.counts.truncated} truncated; "
            f"{self._rechecked()}wrote {self.output}"
        )

    def _rechecked(self) -> str:
        if self.counts is None:
            return ""
        line = ""
        if self.recheck_margin is not None:
            line += (f"{self.counts.rechecked} rows re-checked in fp32 (margin < "
                     f"{self.recheck_margin:.6g}), {self.counts.recheck_changed} labels "
                     "changed; ")
        if self.fallback_margin is not None:
            share = self.counts.fallback / max(self.counts.rows - self.counts.nulls, 1)
            line += (f"{self.counts.fallback} rows ({share:.1%}) sent to the fallback model "
                     f"(margin < {self.fallback_margin:.3g})")
            if self.fallback_recheck_margin is not None:
                line += (f", {self.counts.fallback_rechecked} of them re-checked in fp32 by it "
                         f"(margin < {self.fallback_recheck_margin:.6g}), "
                         f"{self.counts.fallback_recheck_changed} labels changed")
            line += "; "
        return line
