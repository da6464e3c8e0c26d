"""Where benchmark results go: benchmarks/results/NAME.json and NAME.md, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, data: Any, markdown: str) -> None:
    """Write ``data`` as NAME.json and ``markdown`` as NAME.md into benchmarks/results/."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
