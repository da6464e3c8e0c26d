"""``--backend auto`` on a PyTorch model: the fastest dtype whose parity with fp32 passes here.

Only dtypes the device computes natively are tried (bf16 on CPUs with AMX or AVX-512 BF16;
bf16/fp16 on GPUs): emulated bf16 is slower than fp32, so on other CPUs fp32 is chosen at
once without measuring. Each candidate classifies the parity batch (random tokens, mixed
lengths) beside fp32; it qualifies when its probabilities stay within
:data:`~clsx.quality.parity.PROB_TOLERANCES` of fp32's and its labels (as users get them: the
model's thresholds for multi-label) all agree with fp32's; the fastest qualifying dtype wins.
The choice is cached per model fingerprint, device, threads and machine, so that every run on
this machine (a ``--resume`` too) makes the same choice without measuring again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from clsx.artifacts.artifact import Artifact
from clsx.artifacts.bundled import cache_dir
from clsx.inference.hardware import machine_description, native_low_precision
from clsx.inference.runners import RunnerOptions
from clsx.io import durable
from clsx.quality.parity import compare, parity_inputs, passes_dtype_gate

PROBE_ROWS = 16
PROBE_MAX_LENGTH = 128
PROBE_REPEATS = 3
T = TypeVar("T")


@dataclass(frozen=True)
class DtypeChoice:
    """The chosen dtype and what was measured for each candidate (empty: nothing to try)."""

    dtype: str
    measured: dict[str, dict[str, Any]]
    cached: bool = False


def choose_dtype(artifact: Artifact, options: RunnerOptions,
                 candidates: tuple[str, ...] | None = None,
                 cache: Path | None = None) -> DtypeChoice:
    """The torch dtype ``--backend auto`` runs ``artifact`` in on this machine.

    ``candidates`` are the dtypes tried beside fp32 (default: the device's native ones).
    """
    from clsx.inference.runners.torch import resolve_device

    device = resolve_device(options.device)
    candidates = native_low_precision(device) if candidates is None else candidates
    if not candidates:
        return DtypeChoice("fp32", {})
    cache = cache or cache_dir() / "auto-dtype.json"
    key = "|".join([artifact.fingerprint, device, str(options.threads),
                    machine_description(), ",".join(candidates)])
    remembered = read_choices(cache).get(key)
    if remembered is not None:
        return DtypeChoice(remembered["dtype"], remembered["measured"], cached=True)
    measured = _measure(artifact, dataclasses.replace(options, device=device), candidates)
    qualified = [d for d, m in measured.items() if m["qualifies"]]
    dtype = max(qualified, key=lambda d: measured[d]["rows_per_s"])
    remember(cache, key, {"dtype": dtype, "measured": measured})
    return DtypeChoice(dtype, measured)


def _measure(artifact: Artifact, options: RunnerOptions, candidates: tuple[str, ...]
             ) -> dict[str, dict[str, Any]]:
    from clsx.inference.classifier import Classifier

    manifest = artifact.manifest
    probe_manifest = manifest.replace(max_length=min(manifest.max_length, PROBE_MAX_LENGTH))
    probe = parity_inputs(probe_manifest, artifact.tokenizer, PROBE_ROWS)
    measured: dict[str, dict[str, Any]] = {}
    reference: np.ndarray | None = None
    for dtype in ("fp32", *candidates):
        with Classifier.from_artifact(artifact, "torch",
                                      dataclasses.replace(options, dtype=dtype)) as classifier:
            classifier.predict_encoded(probe)  # warm-up
            prediction, seconds = best_time(classifier.predict_encoded, PROBE_REPEATS, probe)
        logits = prediction.logits
        reference = logits if reference is None else reference
        parity = compare(reference, logits, classifier.rule)
        measured[dtype] = {
            "rows_per_s": round(PROBE_ROWS / seconds, 1),
            "max_prob_diff": parity.max_prob_diff,
            "label_agreement": parity.label_agreement,
            "qualifies": dtype == "fp32" or passes_dtype_gate(dtype, parity),
        }
        del classifier
    return measured


def best_time(run: Callable[..., T], repeats: int, *args: Any) -> tuple[T, float]:
    """What ``run(*args)`` returns and its fastest wall time, in seconds, over ``repeats``
    calls (warm it up first)."""
    seconds = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = run(*args)
        seconds = min(seconds, time.perf_counter() - started)
    return result, seconds



def read_choices(cache: Path) -> dict[str, Any]:
    """The choices remembered in ``cache`` (none when it is missing or unreadable)."""
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}


def remember(cache: Path, key: str, value: dict[str, Any]) -> None:
    """Remember a choice under ``key``; a cache that cannot be written only costs a new
    measurement."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        entries = {**read_choices(cache), key: value}
        durable.write_file(cache, json.dumps(entries, indent=2) + "\n")
    except OSError:
        pass
