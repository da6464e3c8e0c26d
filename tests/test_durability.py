"""Crashes at the worst moments, Ctrl-C, damaged part stores, and one writer per OUT."""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clsx.batch.parts.local import PartStore
from clsx.batch.parts.store import LOCK_FILE
from clsx.errors import ClsxError
from tests.conftest import TEXTS, write_parquet
from tests.test_batch_predict import predict

SMALL_PARTS = ("--window-rows", "16", "--part-rows", "16")


class Crash(BaseException):
    """A crash the code under test cannot catch (as kill -9 or a power cut would be)."""


def _texts(count: int) -> list[str]:
    words = " ".join(TEXTS).split()
    rng = random.Random(0)
    return [" ".join(rng.choices(words, k=rng.randint(1, 60))) for _ in range(count)]


@pytest.fixture(scope="module")
def job(tiny_models, tmp_path_factory) -> tuple[Path, Path, pa.Table]:
    """200 rows (13 windows of 16), the model, and the output of one uninterrupted run."""
    root = tmp_path_factory.mktemp("durability")
    source = write_parquet(root / "in.parquet", _texts(200))
    reference = root / "reference.parquet"
    result = predict(source, reference, "-m", tiny_models["bert"], *SMALL_PARTS)
    assert result.exit_code == 0, result.output
    return source, tiny_models["bert"], pq.read_table(reference)


def _store(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _interrupt_after_windows(monkeypatch, windows: int) -> None:
    """Ctrl-C while window ``windows`` (counted from 0) is classified."""
    from clsx.inference.classifier import Classifier

    predict_encoded, seen = Classifier.predict_encoded, []

    def interrupted(self, window):
        if len(seen) == windows:
            raise KeyboardInterrupt
        seen.append(True)
        return predict_encoded(self, window)

    monkeypatch.setattr(Classifier, "predict_encoded", interrupted)


def _crash_before_rename(monkeypatch, output_format: str) -> None:
    """Crash while OUT is being assembled (file) or staged (dataset), before it is renamed."""
    import clsx.batch.parts.local
    import clsx.io.parquet

    if output_format == "file":
        def crash(self, batch):
            raise Crash

        monkeypatch.setattr(clsx.io.parquet.AtomicParquetWriter, "write", crash)
    else:
        def crash(source, target):
            raise Crash

        monkeypatch.setattr(clsx.batch.parts.local, "_link_or_copy", crash)


def _crash_before_clean_up(monkeypatch, out: Path) -> None:
    """Crash once OUT is in place, before the parts are removed."""
    remove = PartStore.remove

    def crashing_remove(self):
        if out.exists():
            raise Crash
        remove(self)

    monkeypatch.setattr(PartStore, "remove", crashing_remove)


@pytest.mark.parametrize("output_format", ["file", "dataset"])
@pytest.mark.parametrize("moment", ["before the rename", "before the clean-up"])
def test_a_crash_while_finishing_leaves_what_resume_completes(job, tmp_path, monkeypatch,
                                                              moment, output_format):
    source, model, reference = job
    out = tmp_path / ("out.parquet" if output_format == "file" else "out")
    args = (source, out, "-m", model, *SMALL_PARTS, "--output-format", output_format)
    if moment == "before the rename":
        _crash_before_rename(monkeypatch, output_format)
    else:
        _crash_before_clean_up(monkeypatch, out)
    with pytest.raises(Crash):
        predict(*args)
    monkeypatch.undo()
    parts = [name for name in _names(_store(out)) if name.startswith("part-")]
    assert len(parts) == 13 and "done.json" in _names(_store(out))
    assert LOCK_FILE not in _names(_store(out))
    if moment == "before the rename":
        assert _names(tmp_path) == ["out.parquet.parts" if output_format == "file"
                                    else "out.parts"]  # no OUT, no temporary left
    else:
        assert pq.read_table(out).equals(reference)  # complete, and already on disk
    resumed = predict(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert pq.read_table(out).equals(reference)
    assert _names(tmp_path) == [out.name]
    if output_format == "dataset":
        assert _names(out) == parts  # no journal, no lock


def test_ctrl_c_keeps_the_saved_parts_and_resume_finishes(job, tmp_path, monkeypatch):
    source, model, reference = job
    out = tmp_path / "out.parquet"
    _interrupt_after_windows(monkeypatch, 3)
    interrupted = predict(source, out, "-m", model, *SMALL_PARTS)
    assert interrupted.exit_code == 130
    assert (f"48 classified rows are saved in {_store(out)}; rerun the same command with "
            "--resume") in interrupted.output
    assert _names(_store(out)) == ["job.json", "part-00000000-00000000.parquet",
                                   "part-00000001-00000001.parquet",
                                   "part-00000002-00000002.parquet"]
    monkeypatch.undo()
    resumed = predict(source, out, "-m", model, *SMALL_PARTS, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "continued after 48 rows" in resumed.output
    assert pq.read_table(out).equals(reference)
    assert not _store(out).exists()


def test_a_missing_part_is_a_one_line_error_and_nothing_is_deleted(job, tmp_path,
                                                                   monkeypatch):
    source, model, _ = job
    out = tmp_path / "out.parquet"
    _interrupt_after_windows(monkeypatch, 3)
    assert predict(source, out, "-m", model, *SMALL_PARTS).exit_code == 130
    monkeypatch.undo()
    (_store(out) / "part-00000001-00000001.parquet").unlink()
    before = _names(_store(out))
    resumed = predict(source, out, "-m", model, *SMALL_PARTS, "--resume")
    assert resumed.exit_code == 1
    assert len(resumed.output.strip().splitlines()) == 1
    assert resumed.output.startswith("Error: ") and "is missing windows 1..1" in resumed.output
    assert _names(_store(out)) == before and not out.exists()


def test_runs_that_save_nothing_leave_no_parts_directory(job, tmp_path):
    source, model, _ = job
    out = tmp_path / "new" / "deeper" / "out.parquet"
    missing_model = predict(source, out, "-m", tmp_path / "no-model")
    assert missing_model.exit_code == 1
    assert _names(tmp_path) == []  # neither OUT.parts nor the directories made for it
    done = tmp_path / "done.parquet"
    done.write_bytes(b"complete")
    assert predict(source, done, "-m", model, "--resume").exit_code == 0
    assert predict(source, done, "-m", model).exit_code == 1  # exists, no --overwrite
    assert _names(tmp_path) == ["done.parquet"]


def test_a_second_writer_of_the_same_output_is_refused_naming_the_first(job, tmp_path):
    source, model, reference = job
    out = tmp_path / "out.parquet"
    # --dtype fp32: a subprocess's --backend auto may pick bf16 where the CPU has it natively.
    command = [sys.executable, "-m", "clsx", "batch-predict", str(source), str(out), "-m",
               str(model), "--quiet", "--dtype", "fp32", *SMALL_PARTS]
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        # The lock is taken before the model is loaded (seconds of imports alone), and a
        # refusal takes a fraction of a second, so the first run is still working.
        lock = _store(out) / LOCK_FILE
        deadline = time.monotonic() + 120
        while not lock.is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, "the first run ended before the second could start"
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended while the second one ran"
        _, first_errors = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, first_errors
    assert second.returncode == 1
    assert second.stderr == (f"Error: {out} is being written by another clsx batch-predict "
                             f"(pid {first.pid}); wait for it or stop it\n")
    assert pq.read_table(out).equals(reference)
    assert _names(tmp_path) == ["out.parquet"]


def test_the_lock_excludes_a_second_holder_and_names_the_first(tmp_path):
    out = tmp_path / "out.parquet"
    holder, other = PartStore(out), PartStore(out)
    with holder.locked():  # flock excludes another open of the file, even in one process
        assert (_store(out) / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(ClsxError, match=rf"\(pid {os.getpid()}\); wait for it"), \
                other.locked():
            pass
        assert _names(_store(out)) == [LOCK_FILE]
    assert not _store(out).exists()
    with other.locked():  # free again
        pass


def test_a_lock_file_removed_before_it_is_locked_is_not_trusted(tmp_path, monkeypatch):
    out = tmp_path / "out.parquet"
    flock, opened = fcntl.flock, []

    def holder_leaves_first(descriptor, operation):
        # As if the holder unlinked the lock and finished between our open and our flock.
        if not opened:
            (_store(out) / LOCK_FILE).unlink()
        opened.append(os.fstat(descriptor).st_ino)
        flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", holder_leaves_first)
    store = PartStore(out)
    with store.locked():
        assert len(opened) == 2  # the orphan was dropped, and a new lock file taken
        assert os.stat(_store(out) / LOCK_FILE).st_ino == os.fstat(store._lock).st_ino
