"""``--engine ray`` on a Ray cluster of several nodes on this machine
(``ray.cluster_utils.Cluster``: a head and worker nodes, each its own raylet): a driver
killed with SIGKILL and a worker node lost mid-job cost only the units in flight, and the
output is the local engine's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clsx.batch.parts.local import parts_directory
from tests.conftest import predict
from tests.test_ray import assert_same_predictions
from tests.test_recheck import random_texts

ray = pytest.importorskip("ray", reason="install clsx[ray]")
# Slow (-m slow, `make test-all`): 50 s for a three-node cluster; the default suite covers
# the same engine on one node (test_ray.py).
pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROWS = 3000
FP32 = ("--dtype", "fp32", "--window-rows", "32")


@pytest.fixture
def cluster():
    """A head node with no CPU for actors and two worker nodes of one CPU each: the two
    actors of a job sit one on each worker node."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a local instance of another test in this process
        ray.shutdown()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [nodes.add_node(num_cpus=1) for _ in range(2)]
    nodes.wait_for_nodes()
    yield nodes, workers
    ray.shutdown()
    nodes.shutdown()


def wait_for(condition, what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def committed(out: Path) -> list[str]:
    return sorted(p.name for p in parts_directory(out).glob("part-*.parquet"))


def test_a_cluster_job_survives_a_killed_driver_and_a_lost_node(cluster, tiny_models,
                                                                 tmp_path):
    """The driver (another process, as on a real cluster) is killed with SIGKILL after its
    first part; a second run on the same OUT is refused while it runs. ``--resume`` runs
    only the windows no part holds, and survives the loss of a worker node on the way
    (its actor is restarted on a new node and its unit retried). OUT equals the local
    engine's: rows, order, labels, probabilities within 1e-5."""
    nodes, workers = cluster
    model = tiny_models["bert"]
    source = tmp_path / "in.parquet"
    import pyarrow as pa

    texts = random_texts(ROWS, seed=5)
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), source)
    out = tmp_path / "out"
    ray_options = ("--engine", "ray", "--address", nodes.address, "--num-workers", "2")
    driver = subprocess.Popen(
        [sys.executable, "-m", "clsx", "batch-predict", str(source), str(out), "-m",
         str(model), *FP32, *ray_options, "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: committed(out) or driver.poll() is not None, "a committed part")
        second = predict(source, out, "-m", model, *FP32, *ray_options)
        assert second.exit_code == 1
        assert second.output.endswith(f"Error: {out} is being written by another clsx "
                                      f"batch-predict (pid {driver.pid}); wait for it or "
                                      "stop it\n")
        assert driver.poll() is None, driver.stderr.read()
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    saved = committed(out)
    assert saved and not out.exists()

    resumed: dict[str, object] = {}

    def resume() -> None:
        resumed["result"] = predict(source, out, "-m", model, *FP32, *ray_options, "--resume")

    runner = threading.Thread(target=resume)
    runner.start()
    wait_for(lambda: set(committed(out)) - set(saved) or not runner.is_alive(),
             "a part of the resumed run")
    nodes.remove_node(workers[0])
    nodes.add_node(num_cpus=1)  # where the lost node's actor is restarted
    runner.join(timeout=300)
    result = resumed["result"]
    assert result.exit_code == 0, result.output
    assert "continued after" in result.output

    expected = tmp_path / "local.parquet"
    assert predict(source, expected, "-m", model, *FP32).exit_code == 0
    expected, got = pq.read_table(expected), pq.read_table(out)
    assert got.column("id").to_pylist() == list(range(ROWS + 1))
    assert_same_predictions(expected, got)
    assert not parts_directory(out).exists()
