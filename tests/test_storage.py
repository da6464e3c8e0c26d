"""Object storage: batch-predict, eval and train on ``s3://`` URIs, against a real
S3-compatible server on 127.0.0.1 (moto's, ``clsx.testing.s3_server``), not a mock of pyarrow.

The subject is storage, not the model: batch-predict runs on the fake runner
(``tests/fakes.py``), in this process or, where a test kills clsx or cuts its network, in a
subprocess (``python -m tests.fake_clsx``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.csv  # noqa: F401  (pa.csv)
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from clsx.batch.parts import open_store
from clsx.io.storage import location
from clsx.testing.s3_server import FAKE_CREDENTIALS, S3Server
from tests.conftest import ROOT, TEXTS, fake_clsx_command, predict, run_clsx, write_parquet

pytest.importorskip("moto.server", reason="install clsx[dev] (moto[server])")

SMALL_PARTS = ("--window-rows", "16", "--part-rows", "16")
KILLABLE_PACE_S = 0.01  # per 16-row batch: a run of 600 rows takes about a second


@pytest.fixture(scope="module")
def server():
    """One server for the module (its start takes a second); each test uses a prefix."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_CREDENTIALS.items():
            patch.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        s3 = S3Server().start()
        s3.create_bucket()
        yield s3
        s3.stop()


@pytest.fixture
def s3(server):
    """The server, and a fresh prefix (``s3.prefix``) for this test's objects."""
    server.prefix = f"t{uuid.uuid4().hex[:8]}"
    return server


def _uri(s3: S3Server, key: str) -> str:
    return s3.uri(f"{s3.prefix}/{key}")


def _upload(s3: S3Server, local, key: str) -> str:
    pafs.copy_files(str(local), f"{s3.bucket}/{s3.prefix}/{key}",
                    destination_filesystem=s3.filesystem())
    return _uri(s3, key)


def _read(s3: S3Server, key: str) -> pa.Table:
    return pq.read_table(f"{s3.bucket}/{s3.prefix}/{key}", filesystem=s3.filesystem())


def _keys(s3: S3Server) -> list[str]:
    selector = pafs.FileSelector(f"{s3.bucket}/{s3.prefix}", recursive=True,
                                 allow_not_found=True)
    base = len(f"{s3.bucket}/{s3.prefix}/")
    return sorted(info.path[base:] for info in s3.filesystem().get_file_info(selector)
                  if info.type == pafs.FileType.File)


@pytest.fixture
def many_texts(tmp_path):
    words = " ".join(TEXTS).split()
    rng = random.Random(0)
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 60))) for _ in range(600)]
    return write_parquet(tmp_path / "in.parquet", texts)


@pytest.fixture
def reference(tiny_models, many_texts, tmp_path, fake_runner):
    """What the local engine writes for ``many_texts`` from and to local files."""
    out = tmp_path / "reference.parquet"
    assert predict(many_texts, out, "-m", tiny_models["bert"], *SMALL_PARTS).exit_code == 0
    return pq.read_table(out)


def test_in_and_out_on_s3_give_what_local_files_give(s3, tiny_models, many_texts, reference,
                                                      tmp_path):
    half = reference.num_rows // 2
    table = pq.read_table(many_texts)
    pq.write_table(table.slice(0, half), tmp_path / "a.parquet")
    pq.write_table(table.slice(half), tmp_path / "b.parquet")
    _upload(s3, tmp_path / "a.parquet", "in/a.parquet")
    _upload(s3, tmp_path / "b.parquet", "in/b.parquet")
    result = predict(_uri(s3, "in/"), _uri(s3, "out.parquet"), "-m", tiny_models["bert"],
                     *SMALL_PARTS, *s3.options)
    assert result.exit_code == 0, result.output
    assert f"wrote {_uri(s3, 'out.parquet')}" in result.output
    assert _read(s3, "out.parquet").equals(reference)
    assert _keys(s3) == ["in/a.parquet", "in/b.parquet", "out.parquet"]  # no parts left
    again = predict(_uri(s3, "in/*.parquet"), _uri(s3, "out.parquet"), "-m",
                    tiny_models["bert"], *SMALL_PARTS, *s3.options, "--resume")
    assert again.exit_code == 0 and "already complete" in again.output


def test_dataset_output_on_s3_is_the_parts(s3, tiny_models, many_texts, reference):
    source = _upload(s3, many_texts, "in.parquet")
    result = predict(source, _uri(s3, "out"), "-m", tiny_models["bert"], *SMALL_PARTS,
                     "--part-rows", "200", "--output-format", "dataset", *s3.options)
    assert result.exit_code == 0, result.output
    parts = [key for key in _keys(s3) if key.startswith("out/")]
    assert len(parts) == 3 and all(key.startswith("out/part-") for key in parts)
    dataset = pq.read_table(f"{s3.bucket}/{s3.prefix}/out", filesystem=s3.filesystem())
    assert dataset.equals(reference)
    assert not any(key.startswith("out.parts") for key in _keys(s3))


def _command(s3: S3Server, source: str, out: str, model, *extra) -> list[str]:
    # fp32 as in this process (the fixtures pin it here): no dtype probe at start-up.
    return fake_clsx_command("batch-predict", source, out, "-m", model, "--quiet",
                             "--dtype", "fp32", *SMALL_PARTS, *s3.options, *extra,
                             delay_s=KILLABLE_PACE_S)


def _parts(s3: S3Server) -> int:
    return sum(key.startswith("out.parquet.parts/part-") for key in _keys(s3))


def test_sigkill_then_resume_on_s3_gives_the_same_output(s3, tiny_models, many_texts,
                                                         reference):
    source, out = _upload(s3, many_texts, "in.parquet"), _uri(s3, "out.parquet")
    model = tiny_models["bert"]
    process = subprocess.Popen(_command(s3, source, out, model), cwd=ROOT,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _parts(s3) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read()
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    keys = _keys(s3)
    assert "out.parquet" not in keys and "out.parquet.parts/job.json" in keys
    job = json.loads(s3.filesystem().open_input_file(
        f"{s3.bucket}/{s3.prefix}/out.parquet.parts/job.json").read())
    assert job["inputs"][0][0] == source  # the URI, and nothing secret
    assert FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in json.dumps(job)
    # The killed run left its lock; its process is gone from this host, so it is taken over.
    resumed = predict(source, out, "-m", model, "--dtype", "fp32", *SMALL_PARTS, *s3.options,
                      "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "continued after" in resumed.output
    assert _read(s3, "out.parquet").equals(reference)
    assert _keys(s3) == ["in.parquet", "out.parquet"]


def test_a_network_outage_is_one_error_and_resume_continues(s3, tiny_models, many_texts,
                                                            reference, fake_runner,
                                                            monkeypatch):
    source, out = _upload(s3, many_texts, "in.parquet"), _uri(s3, "out.parquet")
    args = (source, out, "-m", tiny_models["bert"], *SMALL_PARTS, *s3.options)
    monkeypatch.setattr(fake_runner, "delay_s", KILLABLE_PACE_S)

    def cut_the_network_after_two_parts() -> None:
        while _parts(s3) < 2:
            time.sleep(0.02)
        s3.stop()

    cutter = threading.Thread(target=cut_the_network_after_two_parts)
    cutter.start()
    try:
        failed = predict(*args, "--storage-option", "retries=2")
    finally:
        cutter.join()
        s3.start()
    assert failed.exit_code == 1 and failed.output.startswith("Error: "), failed.output
    assert len(failed.output.strip().splitlines()) == 1
    assert "classified rows are saved" in failed.output and "--resume" in failed.output
    assert "Could not connect to server" in failed.output
    resumed = predict(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert _read(s3, "out.parquet").equals(reference)


def test_a_second_run_on_the_same_s3_output_is_refused(s3, tiny_models, many_texts,
                                                       fake_runner):
    source, out = _upload(s3, many_texts, "in.parquet"), _uri(s3, "out.parquet")
    holder = open_store(location(out, s3.options[1:]))
    with holder.locked():
        second = predict(source, out, "-m", tiny_models["bert"], *s3.options)
    assert second.exit_code == 1
    assert second.output.startswith(f"Error: {out} is being written by another clsx "
                                    f"batch-predict (pid {os.getpid()} on ")
    assert len(second.output.strip().splitlines()) == 1
    assert _keys(s3) == ["in.parquet"]  # the holder let go and left nothing


def test_bad_storage_is_one_error_line(s3, tiny_models, many_texts, fake_runner, monkeypatch):
    model = tiny_models["bert"]
    source = _upload(s3, many_texts, "in.parquet")

    def error(*args: object) -> str:
        result = predict(*args, "-m", model, *s3.options)
        assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        return result.output

    assert "bucket no-such-bucket does not exist" in error(
        "s3://no-such-bucket/in.parquet", _uri(s3, "out.parquet"))
    assert "The specified bucket does not exist" in error(source,
                                                          "s3://no-such-bucket/out.parquet")
    assert "does not exist" in error(_uri(s3, "missing.parquet"), _uri(s3, "out.parquet"))
    assert "unknown --storage-option colour for s3://; known: " in error(
        source, _uri(s3, "o.parquet"), "--storage-option", "colour=blue")
    assert "not accepted: pass credentials through the environment" in error(
        source, _uri(s3, "o.parquet"), "--storage-option", "secret_key=abc")
    assert "secret_key is not accepted" in error(f"{source}?secret_key=abc",
                                                 _uri(s3, "o.parquet"))
    assert "must not hold credentials" in error(
        f"s3://key:secret@{s3.bucket}/in.parquet", _uri(s3, "o.parquet"))
    assert not [key for key in _keys(s3) if key != "in.parquet"]


def test_wrong_credentials_and_a_read_only_output_are_one_error_line(
        s3, tiny_models, many_texts, fake_runner, monkeypatch):
    model = tiny_models["bert"]
    source = _upload(s3, many_texts, "in.parquet")
    bucket = f"arn:aws:s3:::{s3.bucket}"
    reader = s3.user(f"reader-{s3.prefix}", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": [bucket, f"{bucket}/*"]}]})
    with s3.authenticating():
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        wrong = predict(source, _uri(s3, "out.parquet"), "-m", model, *s3.options)
        for name, value in reader.items():
            monkeypatch.setenv(name, value)
        denied = predict(source, _uri(s3, "out.parquet"), "-m", model, *s3.options)
    assert wrong.exit_code == 1 and wrong.output.startswith("Error: "), wrong.output
    assert "ACCESS_DENIED during HeadObject" in wrong.output
    assert denied.exit_code == 1 and denied.output.startswith("Error: "), denied.output
    assert f"cannot write {_uri(s3, 'out.parquet')}" in denied.output
    assert "Access Denied" in denied.output
    for result in (wrong, denied):
        assert len(result.output.strip().splitlines()) == 1
        assert reader["AWS_SECRET_ACCESS_KEY"] not in result.output


def test_eval_reads_its_data_from_s3(s3, tiny_models, tmp_path, fake_runner):
    labelled = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"text": TEXTS, "label": ["negative", "positive"] * 4}), labelled)
    local = run_clsx("eval", "-m", tiny_models["bert"], "--data", labelled)
    remote = run_clsx("eval", "-m", tiny_models["bert"], "--data",
                      _upload(s3, labelled, "labelled.parquet"), *s3.options)
    assert remote.exit_code == 0, remote.output
    assert remote.output == local.output


def test_a_model_on_s3_is_fetched_once_and_runs_as_the_local_one(
        s3, tiny_models, many_texts, reference, tmp_path, fake_runner, monkeypatch):
    monkeypatch.setenv("CLSX_CACHE", str(tmp_path / "cache"))
    model = _upload(s3, tiny_models["bert"], "models/bert")
    first = predict(many_texts, tmp_path / "out.parquet", "-m", model, *SMALL_PARTS,
                    *s3.options)
    assert first.exit_code == 0, first.output
    assert f"fetching {model} (" in first.output
    assert pq.read_table(tmp_path / "out.parquet").equals(reference)
    (copy,) = (tmp_path / "cache" / "models").iterdir()
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        p.name for p in tiny_models["bert"].iterdir())
    labelled = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"text": TEXTS, "label": ["negative", "positive"] * 4}), labelled)
    evaluated = run_clsx("eval", "-m", model, "--data", labelled, *s3.options)
    assert evaluated.exit_code == 0, evaluated.output
    assert "fetching" not in evaluated.output  # this machine has it
    assert evaluated.output == run_clsx("eval", "-m", tiny_models["bert"], "--data",
                                        labelled).output
    missing = predict(many_texts, tmp_path / "other.parquet", "-m", _uri(s3, "models/none"),
                      *s3.options)
    assert missing.exit_code == 1
    assert missing.output.endswith(f"Error: {_uri(s3, 'models/none')} holds no files; give "
                                   "the directory a clsx model was saved to (clsx.json, "
                                   "config.json, the weights)\n")


# Slow (30 s alone, 60-100 s beside the other xdist worker's engines): the default suite
# has Ray on local files (test_ray.py) and every S3 path on the local engine (above); this
# adds their combination: credentials from the environment in Ray's workers.
@pytest.mark.slow
@pytest.mark.ray
def test_a_ray_job_on_s3_resumes_where_it_was_interrupted(s3, tiny_models, tmp_path,
                                                          monkeypatch):
    """Two Ray workers classify IN from S3 into a dataset on S3; interrupted after two
    committed parts, ``--resume`` finishes it from its journal on S3: OUT equals the local
    engine's output, in input order, and no store is left."""
    ray = pytest.importorskip("ray", reason="install clsx[ray]")
    from clsx.batch import ray_engine
    from tests.test_ray import assert_same_predictions

    if ray.is_initialized():  # its workers would lack this module's credentials
        ray.shutdown()
    rng = random.Random(2)
    words = " ".join(TEXTS).split()
    texts = [" ".join(rng.choices(words, k=rng.randint(0, 300))) for _ in range(600)] + [None]
    source = write_parquet(tmp_path / "in.parquet", texts)
    fp32 = ("-m", tiny_models["qwen2"], "--dtype", "fp32", "--window-rows", "64")
    assert predict(source, tmp_path / "local.parquet", *fp32).exit_code == 0
    expected = pq.read_table(tmp_path / "local.parquet")
    table = pq.read_table(source)
    for index, half in enumerate((table.slice(0, 300), table.slice(300))):
        pq.write_table(half, tmp_path / f"{index}.parquet")
        _upload(s3, tmp_path / f"{index}.parquet", f"in/{index}.parquet")
    remote, out = _uri(s3, "in/"), _uri(s3, "out")
    ray_options = ("--engine", "ray", "--num-workers", "2", *s3.options)
    commit = ray_engine._commit

    def interrupted(store, unit, *args):
        if len([k for k in _keys(s3) if "part-" in k]) == 2:
            raise KeyboardInterrupt
        return commit(store, unit, *args)

    monkeypatch.setattr(ray_engine, "_commit", interrupted)
    stopped = predict(remote, out, *fp32, *ray_options)
    assert stopped.exit_code != 0 and "--resume" in stopped.output
    monkeypatch.setattr(ray_engine, "_commit", commit)
    resumed = predict(remote, out, *fp32, *ray_options, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "(continued after 128 rows)" in resumed.output
    keys = _keys(s3)
    assert [k for k in keys if k.startswith("out/")] == [
        f"out/part-{i:08d}-{i:08d}.parquet" for i in range(10)]
    assert not [k for k in keys if "parts" in k or k.startswith(".")]  # no store, no stage
    got = pq.read_table(f"{s3.bucket}/{s3.prefix}/out", filesystem=s3.filesystem())
    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    assert_same_predictions(expected, got)


def test_train_reads_train_and_eval_data_from_s3(s3, tiny_bases, tmp_path):
    texts = [text for text in TEXTS if text.strip()]
    rows = [{"text": text, "label": "pos" if i % 2 else "neg"} for i, text in enumerate(texts)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows * 2))
    evaluation = tmp_path / "eval.csv"
    pa.csv.write_csv(pa.table({"text": texts, "label": [r["label"] for r in rows]}),
                     evaluation)
    result = run_clsx("train", "--model", tiny_bases["bert"], "--epochs", "1", "--batch-size",
                      "4", "--max-length", "32", "--no-calibration", "--train",
                      _upload(s3, train, "train.jsonl"), "--eval",
                      _upload(s3, evaluation, "eval.csv"), *s3.options, "--output",
                      tmp_path / "model")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "model" / "clsx.json").read_text())
    assert manifest["labels"] == ["neg", "pos"]
    assert manifest["training"]["train"] == _uri(s3, "train.jsonl")
    assert manifest["training"]["eval"] == _uri(s3, "eval.csv")


def test_a_scheme_pyarrow_lacks_goes_through_fsspec(tiny_models, many_texts, reference,
                                                    fake_runner):
    pytest.importorskip("fsspec")
    root = f"memory://clsx-{uuid.uuid4().hex[:8]}"
    location(f"{root}/in/in.parquet").write_bytes(many_texts.read_bytes())
    result = predict(f"{root}/in/", f"{root}/out.parquet", "-m", tiny_models["bert"],
                     *SMALL_PARTS)
    assert result.exit_code == 0, result.output
    out = location(f"{root}/out.parquet")
    assert pq.read_table(out.path, filesystem=out.filesystem).equals(reference)
    assert [path.name for path in location(root).files()] == ["out.parquet"]


def test_a_failure_while_out_is_uploaded_leaves_no_out_and_resume_finishes(
        s3, tiny_models, many_texts, reference, fake_runner, monkeypatch):
    from clsx.batch.parts.objects import ObjectParquetWriter

    source, out = _upload(s3, many_texts, "in.parquet"), _uri(s3, "out.parquet")
    args = (source, out, "-m", tiny_models["bert"], *SMALL_PARTS, *s3.options)
    write, written = ObjectParquetWriter.write, []

    def failing_write(self, batch):
        if len(written) == 5:  # some of OUT is already sent to the store
            raise OSError("connection reset by peer")
        written.append(batch)
        write(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(ObjectParquetWriter, "write", failing_write)
        failed = predict(*args)
    assert failed.exit_code == 1, failed.output
    assert failed.output == ("Error: connection reset by peer (committed parts stay: rerun the "
                             "same command with --resume once the storage answers)\n")
    keys = _keys(s3)
    assert "out.parquet" not in keys and "out.parquet.parts/done.json" in keys
    resumed = predict(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert _read(s3, "out.parquet").equals(reference)
