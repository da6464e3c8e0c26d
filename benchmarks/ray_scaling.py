"""`batch-predict --engine ray` on 1, 2 and 3 simulated nodes against the local engine, and
a driver killed at a random moment then resumed.

Same file, same model, one run. The local engine uses every core in one process; each Ray
job runs on a fresh `ray.cluster_utils.Cluster` on this machine (a head node with no CPU
for actors, one worker node of one CPU per actor; each node its own raylet), its driver a
`clsx batch-predict --address` process. The table gives rows/s per actor thread against the
local engine's rows/s per core. Then a 2-node job's driver is killed with SIGKILL at a
random moment, `--resume` finishes it, and its OUT is compared with the local engine's
(rows, order, labels, probabilities within 1e-5). Prints a table and writes
benchmarks/results/ray_scaling.{json,md}.

    python benchmarks/ray_scaling.py [--rows 200000] [--model DIR] [--seed 0]

Without --model it uses a tiny random Qwen2 classifier exported to ONNX: the hard case for
Ray, where tokenising, moving texts to the actors and writing parts weigh most against
the model's compute.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from clsx.batch.config import BatchPredictConfig
from clsx.batch.ray_engine import unit_windows
from clsx.inference.hardware import machine_description, physical_cores

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import default_model, write_input  # noqa: E402
from report import save  # noqa: E402

SUMMARY = re.compile(r"(\d+) rows in ([\d.]+) s(?: \(continued after (\d+) rows\))?: "
                     r"([\d.]+) rows/s")


def command(source: Path, output: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clsx", "batch-predict", str(source), str(output), "-m",
            str(model), "--quiet", *extra]


def run(args: list[str]) -> dict:
    """Run a batch-predict to the end: its summary's numbers and the wall-clock seconds."""
    print("$ clsx " + " ".join(args[3:]), flush=True)
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed:\n{done.stderr}")
    rows, seconds, resumed, rate = SUMMARY.search(done.stderr).groups()
    return {"rows": int(rows), "seconds": float(seconds), "rows_per_s": float(rate),
            "resumed_rows": int(resumed or 0), "wall_s": round(wall, 1)}


@contextmanager
def cluster(nodes: int):
    """A head node without CPUs for actors and ``nodes`` worker nodes of one CPU each."""
    import ray
    from ray.cluster_utils import Cluster

    simulated = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        simulated.add_node(num_cpus=1)
    simulated.wait_for_nodes()
    try:
        yield simulated.address
    finally:
        ray.shutdown()
        simulated.shutdown()


def killed_and_resumed(args: list[str], after: float) -> dict:
    """Start ``args``, SIGKILL it ``after`` seconds in, then run it with --resume."""
    print(f"$ clsx {' '.join(args[3:])}  # killed after {after:.1f} s", flush=True)
    started = time.perf_counter()
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(after)
    if driver.poll() is not None:
        raise SystemExit("the job ended before the kill; pick an earlier moment")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    killed_wall = time.perf_counter() - started
    resumed = run([*args, "--resume"])
    return {"killed_after_s": round(killed_wall, 1), "resume": resumed}


def same_output(expected: Path, got: Path) -> dict:
    """Rows, order and labels equal; the largest probability difference."""
    a, b = pq.read_table(expected), pq.read_table(got)
    same_rows = a.num_rows == b.num_rows and a.column("id").equals(b.column("id"))
    same_labels = a.column("label").equals(b.column("label"))
    probs = [np.array([p for p in t.column("probs").to_pylist() if p is not None])
             for t in (a, b)]
    return {"same_rows_and_order": same_rows, "same_labels": same_labels,
            "max_prob_diff": float(np.abs(probs[0] - probs[1]).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="picks the moment of the kill")
    args = parser.parse_args()
    cores = physical_cores()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model or default_model(root)
        source = root / "input.parquet"
        write_input(source, args.rows)
        local = root / "local.parquet"
        results = {"local engine": run(command(source, local, model))}
        results["local engine"]["threads"] = cores
        for nodes in (1, 2, 3):
            with cluster(nodes) as address:
                results[f"ray, {nodes} node(s)"] = run(command(
                    source, root / f"ray-{nodes}", model, "--engine", "ray", "--address",
                    address, "--num-workers", str(nodes)))
            results[f"ray, {nodes} node(s)"]["threads"] = nodes
        whole = results["ray, 2 node(s)"]["wall_s"]
        after = random.Random(args.seed).uniform(0.15, 0.85) * whole
        with cluster(2) as address:
            kill = killed_and_resumed(command(
                source, root / "ray-killed", model, "--engine", "ray", "--address", address,
                "--num-workers", "2"), after)
        kill["output_vs_local_engine"] = same_output(local, root / "ray-killed")
    per_core = results["local engine"]["rows_per_s"] / cores
    lines = ["| engine | rows | seconds | rows/s | threads | rows/s per thread | "
             "vs local per core |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        r["per_thread"] = round(r["rows_per_s"] / r["threads"], 1)
        r["vs_local_per_core"] = round(r["per_thread"] / per_core, 3)
        lines.append(f"| {name} | {r['rows']:,} | {r['seconds']} | {r['rows_per_s']} | "
                     f"{r['threads']} | {r['per_thread']} | {r['vs_local_per_core']:.2f}x |")
    resume = kill["resume"]
    done_before = resume["resumed_rows"]
    kill["rows_committed_before_kill"] = done_before
    # The driver hands a unit only to a free actor: at most one unit per actor is in flight.
    config = BatchPredictConfig(input="", output="", model="")
    kill["rows_redone_at_most"] = 2 * unit_windows(args.rows, config, 2) * config.window_rows
    kill["extra_wall_s"] = round(kill["killed_after_s"] + resume["wall_s"] - whole, 1)
    check = kill["output_vs_local_engine"]
    table = "\n".join(lines)
    kill_line = (
        f"Driver killed after {kill['killed_after_s']} s of a {whole} s 2-node job: "
        f"{done_before:,} rows committed; `--resume` classified {resume['rows']:,} rows in "
        f"{resume['seconds']} s (wall {resume['wall_s']} s). Rows re-done: at most "
        f"{kill['rows_redone_at_most']:,} ({kill['rows_redone_at_most'] / args.rows:.1%}: one "
        f"unit per actor in flight); "
        f"extra wall-clock over the uninterrupted job, both start-ups included: "
        f"{kill['extra_wall_s']} s. Output vs the local engine's: same rows and order "
        f"{check['same_rows_and_order']}, same labels {check['same_labels']}, largest "
        f"probability difference {check['max_prob_diff']:.2g}.")
    print(table)
    print(kill_line)
    report = {"rows": args.rows, "model": str(args.model or "tiny random Qwen2 (ONNX)"),
              "machine": machine_description(), "cores": cores, "results": results,
              "driver_kill": kill}
    save("ray_scaling", report, f"# batch-predict: local engine vs Ray on simulated nodes\n\n"
         f"Made with `python benchmarks/ray_scaling.py --rows {args.rows}` on "
         f"{report['machine']} ({cores} cores; every simulated node shares them).\n\n"
         f"{table}\n\n{kill_line}\n")


if __name__ == "__main__":
    main()
