"""Re-check (fp32's labels from a lower-precision run): what it costs and what it recovers,
``clsx batch-predict`` Parquet to Parquet, side by side in one run.

    python benchmarks/recheck.py --model minilm-sst2=DIR:sst2 [--rows 3000] [--rounds 2] \
        [--no-bf16] [--name recheck] [--report-only]

For each ``--model NAME=DIR:DATASET`` (a trained clsx model directory; DATASET ``sst2``:
SST-2 test + dev sentences topped up with disaster tweets to ``--rows``, ``goemotions``: the
first ``--rows`` test texts, multi-label) it exports the model once to ``onnx`` and to
``onnx-int8`` with ``--calibration-data`` (``--calibration-rows`` texts disjoint from the
measured ones: SST-2 train, GoEmotions dev), so that the int8 export stores its re-check cut,
and then runs the whole ``clsx batch-predict`` command in a subprocess for each variant:

- torch fp32, the reference;
- onnx fp32 (speed reference of the graph int8 is quantized from);
- onnx-int8 with ``--no-recheck`` and with the re-check (the default);
- torch ``--dtype bf16`` with ``--no-recheck`` and with the re-check (``--no-bf16`` skips
  them; without AVX-512 BF16 / AMX bf16 is emulated and slow, but agreement still counts).

rows/s is rows over the whole command's wall time (interpreter start, model load, the cut,
Parquet in and out), best of the rounds; the rounds alternate the variants' order. The
summary line's own rows/s (the job, without start-up) is reported beside it. Labels equal to
fp32: the share of rows whose ``label`` (multi-label: whole ``labels`` set) equals torch
fp32's. Re-checked, δ and changed come from the run's summary and ``--recheck`` lines; the
cut of torch bf16 is measured on IN's first 512 texts in the first round (each invocation
starts from an empty ``CLSX_CACHE``) and remembered after, so its ``first s`` column shows
that first run's wall time. Each invocation adds its run to benchmarks/results/NAME.json;
NAME.md shows them all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clsx.artifacts.artifact import open_artifact
from clsx.inference.decisions import MULTI, DecisionRule
from clsx.inference.hardware import cpu_flags as hardware_flags
from clsx.inference.hardware import machine_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402
from report import RESULTS, save  # noqa: E402

SUMMARY = re.compile(r"(\d+) rows in ([\d.]+) s: ([\d.]+) rows/s")
RECHECKED = re.compile(r"(\d+) rows re-checked in fp32 \(margin < ([^)]+)\), (\d+) labels changed")
CUT = re.compile(r"--recheck: (re-check below margin .*)")
MEASURED = "measuring the re-check cut"
REFERENCE = "torch fp32"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def variants(model_dir: Path, onnx: Path, int8: Path, bf16: bool
             ) -> dict[str, tuple[Path, str, tuple[str, ...]]]:
    """Name: (model, backend, extra options) of every measured command."""
    table = {
        REFERENCE: (model_dir, "torch", ("--dtype", "fp32")),
        "onnx fp32": (onnx, "onnx", ()),
        "onnx-int8 --no-recheck": (int8, "onnx", ("--no-recheck",)),
        "onnx-int8 re-check": (int8, "onnx", ()),
    }
    if bf16:
        table["torch bf16 --no-recheck"] = (model_dir, "torch", ("--dtype", "bf16",
                                                                  "--no-recheck"))
        table["torch bf16 re-check"] = (model_dir, "torch", ("--dtype", "bf16"))
    return table


def datasets(dataset: str, rows: int, calibration_rows: int, root: Path
             ) -> tuple[Path, Path, str]:
    """IN (Parquet, ``text``), the export's calibration sample (disjoint from IN) and a line
    saying what IN holds; both written under ``root`` (temporary), never into the repo."""
    if dataset == "sst2":
        test = realdata.sst2("test")["text"].to_pylist()
        dev = realdata.sst2("dev")["text"].to_pylist()
        texts = (test + dev)[:rows]
        tweets = realdata.sample(realdata.disaster_tweets(), max(rows - len(texts), 0))
        texts += tweets["text"].to_pylist()
        what = (f"{min(len(test), rows)} SST-2 test + {min(len(dev), max(rows - len(test), 0))} "
                f"SST-2 dev sentences + {max(rows - len(test) - len(dev), 0)} disaster tweets "
                f"(random, seed 0)")
        pool = realdata.sst2("train")
        source = "SST-2 train"
    elif dataset == "goemotions":
        texts = realdata.goemotions("test")["text"].to_pylist()[:rows]
        what = f"the first {len(texts)} GoEmotions test texts"
        pool, source = realdata.goemotions("dev"), "GoEmotions dev"
    else:
        raise SystemExit(f"unknown dataset {dataset} (sst2 or goemotions)")
    seen = set(texts)
    pool = pool.filter(pa.array([t not in seen for t in pool["text"].to_pylist()]))
    calibration = realdata.sample(pool, calibration_rows, seed=1).select(["text"])
    data, sample = root / f"{dataset}-in.parquet", root / f"{dataset}-calibration.parquet"
    realdata.write(pa.table({"text": texts}), data)
    realdata.write(calibration, sample)
    return data, sample, f"{what}; calibration: {calibration.num_rows} {source} texts"


def clsx(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run ``python -m clsx ARGS`` (echoed); its stdout+stderr and wall seconds."""
    print("$ clsx " + " ".join(args), flush=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "clsx", *args], capture_output=True,
                          text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr, seconds


def run_once(model: Path, backend: str, extra: tuple[str, ...], data: Path, out: Path,
             max_length: int, env: dict[str, str]) -> dict[str, Any]:
    """One ``clsx batch-predict`` Parquet to Parquet: wall time, its summary figures."""
    log, wall = clsx(["batch-predict", str(data), str(out), "--model", str(model),
                      "--backend", backend, "--max-length", str(max_length), "--device",
                      "cpu", "--overwrite", "--quiet", *extra], env)
    summary = SUMMARY.search(log)
    if summary is None:
        raise SystemExit(f"no summary line in:\n{log}")
    rechecked = RECHECKED.search(log)
    cut = CUT.search(log)
    print("  " + next(line for line in log.splitlines() if SUMMARY.search(line)), flush=True)
    return {"wall_s": round(wall, 2), "rows": int(summary.group(1)),
            "job_s": float(summary.group(2)), "job_rows_per_s": float(summary.group(3)),
            "rechecked": int(rechecked.group(1)) if rechecked else None,
            "margin": float(rechecked.group(2)) if rechecked else None,
            "changed": int(rechecked.group(3)) if rechecked else None,
            "cut_line": cut.group(1) if cut else None, "measured_cut": MEASURED in log}


def outputs(path: Path, multi: bool) -> tuple[list, np.ndarray]:
    """The decisions users get (label, or the whole label set) and the probabilities."""
    table = pq.read_table(path, columns=["labels" if multi else "label", "probs"])
    decisions = table.column(0).to_pylist()
    if multi:
        decisions = [tuple(sorted(labels or ())) for labels in decisions]
    return decisions, np.array(table.column("probs").to_pylist(), dtype=np.float32)


def fast_margins(probs: np.ndarray, rule: DecisionRule) -> np.ndarray:
    """The margin the re-check compares with δ, from the output's probabilities."""
    if rule.problem_type == MULTI:
        return np.abs(probs - rule.cut).min(axis=1)
    top = np.sort(probs, axis=1)
    return top[:, -1] - top[:, -2]


def measure_model(name: str, model_dir: Path, dataset: str, args, root: Path
                  ) -> dict[str, Any]:
    """Exports, then every variant in ``args.rounds`` rounds; rows of the table."""
    env = {**os.environ, "CLSX_CACHE": str(root / "cache")}  # cuts measured afresh
    data, sample, what = datasets(dataset, args.rows, args.calibration_rows, root)
    print(f"{name}: IN = {what}", flush=True)
    onnx, int8 = root / f"{name}-onnx", root / f"{name}-onnx-int8"
    exported: dict[str, Any] = {}
    for fmt, target, extra in (("onnx", onnx, []),
                               ("onnx-int8", int8, ["--calibration-data", str(sample),
                                                    *args.min_agreement])):
        log, seconds = clsx(["export", str(model_dir), "--format", fmt, "-o", str(target),
                             "--overwrite", *extra], env)
        exported[fmt] = {"seconds": round(seconds, 1), "log": log.strip().splitlines()[-6:]}
        print(log.strip(), flush=True)
    stored = json.loads((int8 / "clsx.json").read_text()).get("parity", {}).get("recheck")
    exported["onnx-int8"]["stored_cut"] = stored
    commands = variants(model_dir, onnx, int8, not args.no_bf16)
    rule = DecisionRule.of(open_artifact(model_dir).manifest, None)
    multi = rule.problem_type == MULTI
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in commands}
    for round_ in range(args.rounds):
        order = list(commands) if round_ % 2 == 0 else list(reversed(commands))
        for variant in order:
            model, backend, extra = commands[variant]
            out = root / f"{name}-{variant.replace(' ', '_')}.parquet"
            result = run_once(model, backend, extra, data, out, args.max_length, env)
            result["decisions"], result["probs"] = outputs(out, multi)
            runs[variant].append(result)
            print(f"  round {round_ + 1} {variant}: {result['rows'] / result['wall_s']:.1f} "
                  f"rows/s (whole command)", flush=True)
    rows = table(runs, rule)
    for row in rows:
        row["model"] = name
    return {"model": name, "dir": str(model_dir), "dataset": dataset, "input": what,
            "problem_type": rule.problem_type, "exports": exported, "rows": rows}


def table(runs: dict[str, list[dict[str, Any]]], rule: DecisionRule) -> list[dict[str, Any]]:
    """One row per variant: best rows/s, ratios, agreement with torch fp32, re-check counts,
    and for a re-check, how its no-recheck twin's label changes sat against δ."""
    reference = runs[REFERENCE][-1]["decisions"]
    best = {variant: max(results, key=lambda r: r["rows"] / r["wall_s"])
            for variant, results in runs.items()}
    rps = {variant: r["rows"] / r["wall_s"] for variant, r in best.items()}
    job_rps = {variant: max(r["job_rows_per_s"] for r in results)
               for variant, results in runs.items()}
    rows = []
    for variant, results in runs.items():
        last = results[-1]
        decisions = last["decisions"]
        differ = [i for i, (a, b) in enumerate(zip(reference, decisions, strict=True)) if a != b]
        stable = all(r["decisions"] == decisions for r in results)
        row: dict[str, Any] = {
            "variant": variant, "rows": last["rows"],
            "wall_s": [r["wall_s"] for r in results], "first_s": results[0]["wall_s"],
            "rows_per_s": round(rps[variant], 1), "job_rows_per_s": job_rps[variant],
            "x_torch_fp32": round(rps[variant] / rps[REFERENCE], 2),
            "labels_equal_fp32": 1 - len(differ) / len(reference), "labels_differ": len(differ),
            "decisions_stable_across_rounds": stable,
            "rechecked": last["rechecked"], "margin": last["margin"],
            "changed": last["changed"], "cut_line": last["cut_line"],
            "measured_cut_first_round": results[0]["measured_cut"],
        }
        if last["rechecked"] is not None:
            row["rechecked_share"] = last["rechecked"] / last["rows"]
        twin = variant.replace(" re-check", " --no-recheck")
        if twin != variant and twin in runs:
            row["x_no_recheck"] = round(rps[variant] / rps[twin], 3)
            row["x_no_recheck_job"] = round(job_rps[variant] / job_rps[twin], 3)
            fast = runs[twin][-1]
            flips = [i for i, (a, b) in enumerate(zip(reference, fast["decisions"], strict=True))
                     if a != b]
            margin = fast_margins(fast["probs"], rule)
            delta = last["margin"] if last["margin"] is not None else 0.0
            row["fast_flips"] = len(flips)
            row["fast_flips_under_cut"] = int(sum(margin[i] < delta for i in flips))
            row["fast_flip_margins"] = sorted(round(float(margin[i]), 5) for i in flips)
            row["fast_rows_under_cut"] = int((margin < delta).sum())
            row["changed_vs_no_recheck_output"] = sum(
                a != b for a, b in zip(fast["decisions"], decisions, strict=True))
        rows.append(row)
    return rows


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


def markdown(run: dict[str, Any]) -> str:
    """A table of one model's variants, and the re-check lines."""
    lines = [f"### {run['model']} ({run['problem_type']}): {run['input']}", "",
             "| variant | rows/s (whole cmd) | best of s | first s | rows/s (job) | "
             "x torch fp32 | x no-recheck (cmd / job) | labels = fp32 | differ | "
             "re-checked | changed by re-check | δ |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in run["rows"]:
        share = r.get("rechecked_share")
        rechecked = "" if r["rechecked"] is None else f"{r['rechecked']} ({share:.1%})"
        ratio = (f"{r['x_no_recheck']:.2f} / {r['x_no_recheck_job']:.2f}"
                 if "x_no_recheck" in r else "")
        lines.append(
            f"| {r['variant']} | {r['rows_per_s']} | {min(r['wall_s'])} | {r['first_s']} | "
            f"{r['job_rows_per_s']} | {r['x_torch_fp32']} | {ratio} | "
            f"{percent(r['labels_equal_fp32'])} | {r['labels_differ']} | {rechecked} | "
            f"{'' if r['changed'] is None else r['changed']} | "
            f"{'' if r['margin'] is None else r['margin']} |")
    lines.append("")
    for r in run["rows"]:
        if "fast_flips" in r:
            twin = r["variant"].replace(" re-check", " --no-recheck")
            lines.append(
                f"- {r['variant']}: `{r['cut_line']}`"
                f"{' (measured on IN in round 1)' if r['measured_cut_first_round'] else ''}. "
                f"Of the {r['fast_flips']} labels `{twin}` changed from fp32, "
                f"{r['fast_flips_under_cut']} had a fast margin under δ (re-checked); their "
                f"margins: {r['fast_flip_margins'][:12]}"
                f"{' ...' if len(r['fast_flip_margins']) > 12 else ''}; "
                f"{r['fast_rows_under_cut']} of its rows were under δ. The re-check's output "
                f"differs from `{twin}`'s on {r['changed_vs_no_recheck_output']} rows "
                f"(its summary: {r['changed']} labels changed).")
    unstable = [r["variant"] for r in run["rows"] if not r["decisions_stable_across_rounds"]]
    if unstable:
        lines.append(f"- decisions differed between rounds: {', '.join(unstable)}")
    exports = run["exports"]
    lines.append(f"- exports: onnx {exports['onnx']['seconds']} s, onnx-int8 (with "
                 f"--calibration-data) {exports['onnx-int8']['seconds']} s")
    return "\n".join(lines) + "\n"


def report(runs: list[dict[str, Any]]) -> str:
    """Markdown of every stored run (one invocation each), with its CPU and command."""
    text = ("## Re-check: fp32's labels from a lower-precision run\n\n"
            "Made with `python benchmarks/recheck.py`. Every variant is the whole `clsx "
            "batch-predict` command, Parquet to Parquet, in a subprocess. rows/s (whole cmd): "
            "rows over the command's wall time, best of the rounds (which alternate the "
            "variants' order); rows/s (job): the summary line's, without start-up and model "
            "load; `x`: ratios of rows/s in the same run. labels = fp32: rows whose label "
            "(multi-label: whole label set) equals torch fp32's. re-checked, changed and δ: "
            "the run's summary line; the int8 export stores δ measured on its calibration "
            "data, torch bf16 measures it on IN's first 512 texts in round 1 (first s).\n\n")
    for invocation in runs:
        text += (f"CPU: {invocation['machine']}; flags: {', '.join(invocation['cpu_flags'])}. "
                 f"Command: `python {' '.join(invocation['command'])}`\n\n")
        for run in invocation["models"]:
            text += markdown(run) + "\n"
    return text


def parse_model(spec: str) -> tuple[str, Path, str]:
    """NAME=DIR:DATASET."""
    name, rest = spec.split("=", 1)
    directory, dataset = rest.rsplit(":", 1)
    return name, Path(directory), dataset


def stored_runs(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text())["runs"] if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=DIR:DATASET")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--calibration-rows", type=int, default=500)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-agreement", type=lambda v: ["--min-agreement", v], default=[],
                        help="the int8 export's gate (clsx export --min-agreement), where "
                             "the default refuses the model")
    parser.add_argument("--no-bf16", action="store_true", help="skip torch --dtype bf16")
    parser.add_argument("--name", default="recheck")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite NAME.md from NAME.json; measure nothing")
    args = parser.parse_args()
    runs = stored_runs(args.name)
    if not args.report_only:
        flags = [flag for flag in FLAGS if flag in hardware_flags()]
        print(f"CPU: {machine_description()}; flags: {', '.join(flags)}", flush=True)
        invocation: dict[str, Any] = {"machine": machine_description(), "cpu_flags": flags,
                                      "command": sys.argv, "models": []}
        with tempfile.TemporaryDirectory(prefix="clsx-recheck-") as tmp:
            for spec in args.model:
                name, directory, dataset = parse_model(spec)
                invocation["models"].append(
                    measure_model(name, directory, dataset, args, Path(tmp)))
        runs.append(invocation)
    save(args.name, {"runs": runs}, report(runs))
    print(report(runs))


if __name__ == "__main__":
    main()
