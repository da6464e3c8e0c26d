"""Batch jobs that survive: kill -9 and resume, changed jobs refused, disk full, datasets.

The subject is parts, resume and files, not the model: every test runs on the fake runner
(``tests/fakes.py``), in this process through the ``fake_runner`` fixture or, where a test
kills clsx, in a subprocess started with ``python -m tests.fake_clsx``.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, TEXTS, fake_clsx_command, predict, write_parquet

SMALL_PARTS = ("--window-rows", "16", "--part-rows", "16")
# The fake classifies a window in microseconds; at this pace per batch (one batch per
# 16-row window here) a run takes seconds, like a model's, so that kills land mid-run.
KILLABLE_PACE_S = 0.01


@pytest.fixture
def many_texts(tmp_path):
    words = " ".join(TEXTS).split()
    rng = random.Random(0)
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 60))) for _ in range(3000)]
    return write_parquet(tmp_path / "in.parquet", texts)


def _command(source, out, model, *extra) -> list[str]:
    return fake_clsx_command("batch-predict", source, out, "-m", model, "--quiet",
                             *SMALL_PARTS, *extra, delay_s=KILLABLE_PACE_S)


def _parts(out):
    directory = out.with_name(out.name + ".parts")
    return sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []


def test_sigkill_at_random_points_then_resume_gives_the_same_output(
        tiny_models, many_texts, tmp_path, fake_runner):
    model = tiny_models["qwen2"]
    reference = tmp_path / "reference.parquet"
    assert predict(many_texts, reference, "-m", model, *SMALL_PARTS).exit_code == 0
    out = tmp_path / "out.parquet"
    rng = random.Random(1)
    kills = 0
    for _ in range(2):
        process = subprocess.Popen(_command(many_texts, out, model, "--resume"), cwd=ROOT,
                                   stderr=subprocess.PIPE)
        seen = len(_parts(out))
        deadline = time.monotonic() + 60
        while len(_parts(out)) <= seen and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a part, or between two
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1
    assert not out.exists() and _parts(out)
    finished = subprocess.run(_command(many_texts, out, model, "--resume"), cwd=ROOT,
                              capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "continued after" in finished.stderr
    assert pq.read_table(out).equals(pq.read_table(reference))
    assert not out.with_name(out.name + ".parts").exists()


def test_leftover_parts_are_reported_with_the_resume_command(tiny_models, many_texts, tmp_path,
                                                              fake_runner):
    out = tmp_path / "out.parquet"
    with _disk_full_after_parts(3):
        failed = predict(many_texts, out, "-m", tiny_models["bert"], *SMALL_PARTS)
    assert failed.exit_code == 1 and "No space left on device" in failed.output
    assert "48 classified rows are saved" in failed.output and "--resume" in failed.output
    again = predict(many_texts, out, "-m", tiny_models["bert"], *SMALL_PARTS)
    assert again.exit_code == 1 and "rerun the same command with --resume" in again.output
    assert f"an interrupted run left 48 classified rows in {out}.parts;" in again.output
    resumed = predict(many_texts, out, "-m", tiny_models["bert"], *SMALL_PARTS, "--resume")
    assert resumed.exit_code == 0, resumed.output
    reference = tmp_path / "reference.parquet"
    assert predict(many_texts, reference, "-m", tiny_models["bert"], *SMALL_PARTS).exit_code == 0
    assert pq.read_table(out).equals(pq.read_table(reference))


def test_resume_with_other_arguments_or_a_changed_input_is_refused(
        tiny_models, many_texts, tmp_path, fake_runner):
    out = tmp_path / "out.parquet"
    model = tiny_models["bert"]
    with _disk_full_after_parts(2):
        assert predict(many_texts, out, "-m", model, *SMALL_PARTS).exit_code == 1
    other = predict(many_texts, out, "-m", model, *SMALL_PARTS, "--threshold", "0.3", "--resume")
    assert other.exit_code == 1 and "cannot resume" in other.output
    assert "threshold: was not given, now 0.3" in other.output
    os.utime(many_texts, ns=(0, 0))
    changed = predict(many_texts, out, "-m", model, *SMALL_PARTS, "--resume")
    assert changed.exit_code == 1 and "inputs: was" in changed.output
    assert len(_parts(out)) == 2  # nothing mixed in, nothing lost


def test_resume_on_a_complete_output_exits_zero(tiny_models, texts_parquet, tmp_path,
                                                fake_runner):
    out = tmp_path / "out.parquet"
    assert predict(texts_parquet, out, "-m", tiny_models["bert"]).exit_code == 0
    before = out.read_bytes()
    again = predict(texts_parquet, out, "-m", tiny_models["bert"], "--resume")
    assert again.exit_code == 0 and "already complete" in again.output
    assert out.read_bytes() == before


def test_dataset_output_is_a_directory_of_parts_with_the_same_rows(tiny_models, many_texts,
                                                                   tmp_path, fake_runner):
    model = tiny_models["bert"]
    as_file, as_dataset = tmp_path / "out.parquet", tmp_path / "out-dataset"
    assert predict(many_texts, as_file, "-m", model, *SMALL_PARTS).exit_code == 0
    result = predict(many_texts, as_dataset, "-m", model, *SMALL_PARTS, "--part-rows", "1000",
                     "--output-format", "dataset")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in as_dataset.iterdir())
    assert len(names) == 3 and all(n.startswith("part-") and n.endswith(".parquet")
                                   for n in names)
    assert pq.read_table(as_dataset).equals(pq.read_table(as_file))


def test_unwritable_output_directory_is_one_line(tiny_models, texts_parquet, tmp_path,
                                                fake_runner):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = predict(texts_parquet, blocker / "out.parquet", "-m", tiny_models["bert"])
    assert result.exit_code == 1
    assert result.output == (f"Error: cannot write {blocker / 'out.parquet'}: {blocker} is a "
                             "file, not a directory\n")
    assert fake_runner.opened == []  # refused before the model loads


@contextmanager
def _disk_full_after_parts(parts: int) -> Iterator[None]:
    """Make the disk 'fill up' while the part after ``parts`` committed ones is flushed.

    A context of its own rather than the test's ``monkeypatch``: undoing that would also
    undo the fake runner.
    """
    import clsx.io.durable

    fsync = clsx.io.durable.fsync_file
    flushed = []

    def filling_fsync(path):
        if path.name.startswith(".part-"):
            if len(flushed) == parts:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            flushed.append(path)
        fsync(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clsx.io.durable, "fsync_file", filling_fsync)
        yield
