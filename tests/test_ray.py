"""``--engine ray`` on a local Ray instance: the same rows and values as the local engine."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clsx.batch.parts import open_store
from clsx.io.storage import location
from tests.conftest import TEXTS, fixed_format_clock, write_parquet
from tests.test_batch_predict import predict
from tests.test_recheck import int8_labelled, random_texts, run_ok

pytest.importorskip("ray.data", reason="install clsx[ray]")
pytestmark = pytest.mark.ray


def local_and_ray(model, tmp_path, rows: int, seed: int, *ray_options: str
                  ) -> tuple[pa.Table, pa.Table, Path]:
    """The same texts through the local engine and two Ray workers: both outputs, and Ray's
    dataset directory.

    Both run fp32: Ray's actors are other processes, where --backend auto may pick bf16 on a
    CPU that has it (the tests pin auto to fp32 in this process only).
    """
    rng = random.Random(seed)
    words = " ".join(TEXTS).split()
    texts = [" ".join(rng.choices(words, k=rng.randint(0, 40))) for _ in range(rows)] + [None]
    source = write_parquet(tmp_path / "in.parquet", texts)
    local, on_ray = tmp_path / "local.parquet", tmp_path / "ray-out"
    fp32 = ("-m", model, "--dtype", "fp32")
    assert predict(source, local, *fp32).exit_code == 0
    result = predict(source, on_ray, *fp32, "--engine", "ray", "--num-workers", "2",
                     *ray_options)
    assert result.exit_code == 0, result.output
    return pq.read_table(local), pq.read_table(on_ray), on_ray


def assert_same_predictions(expected: pa.Table, got: pa.Table) -> None:
    """Same schema, texts and labels; probabilities equal but for batch composition."""
    assert got.schema.equals(expected.schema)
    assert got.column("text").equals(expected.column("text"))
    assert got.column("label").equals(expected.column("label"))
    probs = [np.array(t.column("probs").to_pylist()[:-1]) for t in (expected, got)]
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-5)  # batches differ, not values


# Slow: ordered output is in the default suite twice already
# (test_ray_actors_run_the_format_auto_chose_in_the_driver and
# test_ray_actors_recheck_at_the_drivers_cut); this adds only size.
@pytest.mark.slow
def test_two_ray_workers_write_what_the_local_engine_writes(tiny_models, tmp_path):
    expected, got, on_ray = local_and_ray(tiny_models["qwen2"], tmp_path, 3000, 0,
                                          "--preserve-order", "--window-rows", "256",
                                          "--part-rows", "1000")
    assert len(sorted(on_ray.glob("part-*.parquet"))) > 2
    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    assert_same_predictions(expected, got)


def test_unordered_ray_output_holds_every_row_once_with_the_local_labels(tiny_openvino,
                                                                         tmp_path):
    """On the openvino backend (the ordered test above runs torch): each actor compiles
    its own OpenVINO model."""
    expected, got, on_ray = local_and_ray(tiny_openvino["qwen2"], tmp_path, 1000, 1,
                                          "--window-rows", "128")
    names = sorted(p.name for p in on_ray.iterdir())
    assert len(names) > 1 and all(n.startswith("part-") and n.endswith(".parquet")
                                  for n in names)
    assert sorted(got.column("id").to_pylist()) == list(range(expected.num_rows))  # once each
    assert_same_predictions(expected, got.sort_by("id"))


def test_ray_refuses_what_it_cannot_do(tiny_models, texts_parquet, tmp_path):
    result = predict(texts_parquet, tmp_path / "o", "-m", tiny_models["qwen2"], "--engine",
                     "ray", "--resume")
    assert result.exit_code == 1 and "local engine only" in result.output
    local = predict(texts_parquet, tmp_path / "o.parquet", "-m", tiny_models["qwen2"],
                    "--num-workers", "2")
    assert local.exit_code == 1 and "apply to --engine ray only" in local.output


def test_a_second_writer_is_refused_before_ray_starts(tiny_models, texts_parquet, tmp_path,
                                                     monkeypatch):
    """The driver takes the local engine's lock on OUT: held here (as a running job holds
    it), a Ray run on the same OUT is refused in one line, before Ray starts."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: pytest.fail("Ray started"))
    out = tmp_path / "ray-out"
    with open_store(location(out)).locked():
        result = predict(texts_parquet, out, "-m", tiny_models["qwen2"], "--engine", "ray")
    assert result.exit_code == 1
    assert result.output.endswith(f"Error: {out} is being written by another clsx "
                                  f"batch-predict (pid {os.getpid()}); wait for it or stop "
                                  "it\n")
    assert sorted(tmp_path.iterdir()) == [texts_parquet]


def test_missing_ray_says_how_to_install(tiny_models, texts_parquet, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = predict(texts_parquet, tmp_path / "o", "-m", tiny_models["qwen2"], "--engine",
                     "ray")
    assert result.exit_code == 1 and "pip install 'clsx[ray]'" in result.output


def test_ray_actors_run_the_format_auto_chose_in_the_driver(tiny_models, tmp_path,
                                                             monkeypatch):
    """The driver searches once (on a fixed clock, int8 fastest by far) and every actor
    runs its choice: the output is the int8 export's, which torch fp32's is not."""
    from clsx.auto import formats

    monkeypatch.setenv("CLSX_CACHE", str(tmp_path / "cache"))
    fixed_format_clock(monkeypatch, {"torch fp32": 1.0, "onnx": 0.9, "onnx-int8": 0.5})
    # torch and ONNX only: OpenVINO's two exports would add 15 s and nothing to this test.
    monkeypatch.setattr(formats, "installed", lambda package: False)
    source = write_parquet(tmp_path / "in.parquet", (TEXTS * 50)[:400])
    on_ray = tmp_path / "ray-out"
    result = predict(source, on_ray, "-m", tiny_models["bert"], "--auto-formats",
                     "--engine", "ray", "--num-workers", "2", "--preserve-order",
                     "--window-rows", "100")
    assert result.exit_code == 0, result.output
    assert ("backend onnx on ray (2 workers), onnx-int8 chosen by --backend auto: 2.00x "
            "torch fp32") in result.output
    (int8,) = (tmp_path / "cache" / "exports").glob("*/onnx-int8")
    outputs = {}
    for name, model in (("int8", int8), ("torch", tiny_models["bert"])):
        outputs[name] = tmp_path / f"{name}.parquet"
        assert predict(source, outputs[name], "-m", model, "--dtype" if name == "torch"
                       else "--backend", "fp32" if name == "torch" else "onnx",
                       "--window-rows", "100").exit_code == 0
    assert_same_predictions(pq.read_table(outputs["int8"]), pq.read_table(on_ray))
    with pytest.raises(AssertionError):  # int8 is told apart from torch fp32
        assert_same_predictions(pq.read_table(outputs["torch"]), pq.read_table(on_ray))


def test_ray_actors_recheck_at_the_drivers_cut(tiny_models, tiny_exports, tmp_path):
    """Every actor re-checks with its own torch fp32 reference, here every row (the stored
    cut is 1): the rows come out with torch fp32's exact probs, which the ONNX graph alone
    does not give bit for bit."""
    source = write_parquet(tmp_path / "in.parquet", random_texts(200, seed=4))
    model = int8_labelled(tiny_exports["bert"], tmp_path, margin=1.0)  # every row
    # As each actor runs: one thread, windows of 64 rows (bit for bit the same batches).
    exact, _ = run_ok(source, tmp_path / "fp32.parquet", tiny_models["bert"], "--dtype",
                      "fp32", "--threads", "1", "--window-rows", "64")
    alone, _ = run_ok(source, tmp_path / "alone.parquet", model, "--no-recheck")
    on_ray, output = run_ok(source, tmp_path / "ray-out", model, "--engine", "ray",
                            "--num-workers", "2", "--preserve-order", "--window-rows", "64")
    assert "re-check below margin 1" in output
    # The actors' counters, summed: the local engine's summary line.
    assert "1 null texts, 0 truncated; 200 rows re-checked in fp32 (margin < 1)," in output
    assert on_ray.column("label").equals(exact.column("label"))
    probs = [np.array(t.column("probs").to_pylist()[:-1]) for t in (exact, alone, on_ray)]
    assert (probs[1] != probs[0]).any() and (probs[2] == probs[0]).all()
