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
from tests.fakes import fake_ray
from tests.test_batch_predict import predict
from tests.test_recheck import int8_labelled, random_texts, run_ok

pytest.importorskip("ray", reason="install clsx[ray]")
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


# Slow: Ray's output is compared with the local engine's in the default suite three times
# (the format search, the re-check and tests/test_ray_cluster.py); these add size and the
# OpenVINO backend (each actor compiles its own model).
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_two_ray_workers_write_what_the_local_engine_writes(tiny_models, tiny_openvino,
                                                            tmp_path, backend):
    model = tiny_models["qwen2"] if backend == "torch" else tiny_openvino["qwen2"]
    expected, got, on_ray = local_and_ray(model, tmp_path, 3000, 0, "--window-rows", "256",
                                          "--part-rows", "1000")
    assert len(sorted(on_ray.glob("part-*.parquet"))) > 2
    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    assert_same_predictions(expected, got)


def test_ray_options_need_the_ray_engine(tiny_models, texts_parquet, tmp_path):
    local = predict(texts_parquet, tmp_path / "o.parquet", "-m", tiny_models["qwen2"],
                    "--num-workers", "2")
    assert local.exit_code == 1 and "apply to --engine ray only" in local.output


def test_the_local_engine_does_not_resume_a_ray_job(tiny_models, texts_parquet, tmp_path):
    """A Ray job's parts may have gaps, which only Ray's resume fills: the journal records
    the engine, and the other engine's resume is refused in one line."""
    out = tmp_path / "out"
    store = open_store(location(out))
    with store.locked():
        store.start({"engine": "ray"})
    result = predict(texts_parquet, out, "-m", tiny_models["bert"], "--resume",
                     "--output-format", "dataset")
    assert result.exit_code == 1
    assert "cannot resume: the job in" in result.output
    assert "engine: was 'ray', now 'local'" in result.output


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


def test_units_skip_the_committed_windows_and_fill_the_gaps(texts_parquet, tmp_path):
    """A resumed Ray job reads IN's windows again and sends only those no part holds, in
    units that never span a committed part."""
    from clsx.batch.config import BatchPredictConfig
    from clsx.batch.parts.store import Part
    from clsx.batch.ray_engine import _pending_units
    from clsx.io.parquet import open_input

    config = BatchPredictConfig(input=str(texts_parquet), output=tmp_path / "o", model="m",
                                window_rows=2)
    source = open_input(config.input, "text", None, ())
    windows = -(-source.num_rows // 2)
    committed = [Part(location(tmp_path / "p"), 0, 1), Part(location(tmp_path / "p"), 4, 4)]
    units = list(_pending_units(source, config, committed, unit_windows=3))
    assert [(u.first, u.last) for u in units] == [
        (2, 3), *((first, min(first + 2, windows - 1)) for first in range(5, windows, 3))]
    ids = [i for u in units for b in u.batches for i in b.column("id").to_pylist()]
    assert ids == [4, 5, 6, 7, *range(10, source.num_rows)]


def test_a_store_with_gaps_is_resumable_but_not_publishable(tmp_path):
    import pyarrow as pa

    store = open_store(location(tmp_path / "out"))
    schema = pa.schema([("id", pa.int64())])
    with store.locked():
        store.start({"engine": "ray"})
        for first in (0, 2):
            writer = store.writer(first, schema)
            writer.write(pa.record_batch([pa.array([first])], schema=schema))
            writer.commit(first)
        assert [(p.first, p.last) for p in store.parts(contiguous=False)] == [(0, 0), (2, 2)]
        assert store.committed_rows() == 2
        with pytest.raises(Exception, match="is missing windows 1..1"):
            store.parts()


# In this process by default (the pinned config reaching the actors); on Ray (actors in
# their own processes, 20 s more) in the slow suite.
@pytest.mark.parametrize("actors", ["in-process", pytest.param("ray", marks=pytest.mark.slow)])
def test_ray_actors_run_the_format_auto_chose_in_the_driver(tiny_models, tmp_path,
                                                             monkeypatch, actors):
    """The driver searches once (on a fixed clock, int8 fastest by far) and every actor
    runs its choice: the output is the int8 export's, which torch fp32's is not."""
    from clsx.auto import formats

    if actors == "in-process":
        fake_ray(monkeypatch)

    monkeypatch.setenv("CLSX_CACHE", str(tmp_path / "cache"))
    fixed_format_clock(monkeypatch, {"torch fp32": 1.0, "onnx": 0.9, "onnx-int8": 0.5})
    # torch and ONNX only: OpenVINO's two exports would add 15 s and nothing to this test.
    monkeypatch.setattr(formats, "installed", lambda package: False)
    source = write_parquet(tmp_path / "in.parquet", (TEXTS * 50)[:400])
    on_ray = tmp_path / "ray-out"
    result = predict(source, on_ray, "-m", tiny_models["bert"], "--auto-formats",
                     "--engine", "ray", "--num-workers", "2", "--window-rows", "100")
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


# In this process by default (the cut reaching the actors' config, the counters summed);
# on Ray (actors in their own processes, each loading its reference) in the slow suite.
@pytest.mark.parametrize("actors", ["in-process", pytest.param("ray", marks=pytest.mark.slow)])
def test_ray_actors_recheck_at_the_drivers_cut(tiny_models, tiny_exports, tmp_path,
                                               monkeypatch, actors):
    """Every actor re-checks with its own torch fp32 reference, here every row (the stored
    cut is 1): the rows come out with torch fp32's exact probs, which the ONNX graph alone
    does not give bit for bit."""
    if actors == "in-process":
        fake_ray(monkeypatch)
    source = write_parquet(tmp_path / "in.parquet", random_texts(200, seed=4))
    model = int8_labelled(tiny_exports["bert"], tmp_path, margin=1.0)  # every row
    # As each actor runs: one thread, windows of 64 rows (bit for bit the same batches).
    exact, _ = run_ok(source, tmp_path / "fp32.parquet", tiny_models["bert"], "--dtype",
                      "fp32", "--threads", "1", "--window-rows", "64")
    alone, _ = run_ok(source, tmp_path / "alone.parquet", model, "--no-recheck")
    on_ray, output = run_ok(source, tmp_path / "ray-out", model, "--engine", "ray",
                            "--num-workers", "2", "--window-rows", "64")
    assert "re-check below margin 1" in output
    # The actors' counters, summed: the local engine's summary line.
    assert "1 null texts, 0 truncated; 200 rows re-checked in fp32 (margin < 1)," in output
    assert on_ray.column("label").equals(exact.column("label"))
    probs = [np.array(t.column("probs").to_pylist()[:-1]) for t in (exact, alone, on_ray)]
    assert (probs[1] != probs[0]).any() and (probs[2] == probs[0]).all()


def test_an_actors_failure_is_one_line():
    """What a model that cannot load on a node, or bad text, looks like to the user: the
    actor's own message, not Ray's traceback."""
    import ray

    from clsx.batch.ray_engine import _clsx_error
    from clsx.errors import ClsxError

    raised = ray.exceptions.RayTaskError("predict", "Traceback ...", ClsxError("bad row 3"))
    assert str(_clsx_error(raised)) == "bad row 3"
    died = ray.exceptions.ActorDiedError()
    died.error_msg = ("The actor died because of an error raised in its creation task, "
                      "ray::Predictor.__init__()\nTraceback (most recent call last):\n  ...\n"
                      "clsx.errors.ClsxError: model dir not found\n")
    assert str(_clsx_error(died)) == "model dir not found"
    crashed = ray.exceptions.ActorDiedError()
    assert str(_clsx_error(crashed)) == ("a Ray actor failed: The actor died unexpectedly "
                                         "before finishing this task.")


def test_ray_actors_run_the_cascade_the_driver_cut(tiny_models, qwen2_copy, tmp_path,
                                                   monkeypatch):
    """A cascade on Ray: the driver chooses the cut, every actor sends its unsure rows to
    its own copy of the fallback model, and OUT is the local engine's. In this process
    only: the fallback runs --backend auto, which the tests pin to fp32 here, while actors
    in their own processes would choose bf16 where the CPU has it."""
    fake_ray(monkeypatch)
    source = write_parquet(tmp_path / "in.parquet", random_texts(200, seed=5))
    cascade = ("--dtype", "fp32", "--threads", "1", "--window-rows", "64",
               "--fallback-model", str(qwen2_copy), "--fallback-agreement", "0.9")
    local, _ = run_ok(source, tmp_path / "local.parquet", tiny_models["bert"], *cascade)
    on_ray, output = run_ok(source, tmp_path / "ray-out", tiny_models["bert"], *cascade,
                            "--engine", "ray", "--num-workers", "2")
    assert "go to the fallback model" in output and "sent to the fallback model" in output
    sent = int(output.split(" rows (")[0].rsplit(" ", 1)[1])
    assert 0 < sent < 200
    assert on_ray.column("label").equals(local.column("label"))
