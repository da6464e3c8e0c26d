"""Shared fixtures: tiny random classifiers built once per session, copied per test, and the
fake runner (``tests/fakes.py``) for the tests whose subject is not the model."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from clsx.artifacts.manifest import Manifest
from clsx.cli import main
from clsx.testing.tiny_models import FAMILIES, build_tiny_base, build_tiny_classifier
from tests.fakes import FAKE_BACKEND, FAKE_RUNNER, FakeRunner

# The repository root: a clsx subprocess runs there so that it imports this checkout.
ROOT = Path(__file__).resolve().parents[1]

TEXTS = [
    "the delivery was fast and the food arrived hot",
    "",
    "terrible service!!! never again",
    "ok",
    "great sound quality but the battery dies quickly " * 20,  # longer than max_length
    "Émoji 👍 and 中文 and control \x07 characters",
    "   ",
    "a",
]


class PerFamily(Mapping[str, Path]):
    """One directory per family, each built on first use and then kept for the session.

    A test that needs only the Qwen2 model (or export) does not wait for the others: an
    ONNX export takes seconds per family on two cores.
    """

    def __init__(self, build: Callable[[str], Path]) -> None:
        self._build = build
        self._built: dict[str, Path] = {}

    def __getitem__(self, family: str) -> Path:
        if family not in FAMILIES:
            raise KeyError(family)
        if family not in self._built:
            self._built[family] = self._build(family)
        return self._built[family]

    def __iter__(self) -> Iterator[str]:
        return iter(FAMILIES)

    def __len__(self) -> int:
        return len(FAMILIES)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Mapping[str, Path]:
    """One tiny single-label classifier per family (qwen2, llama, bert), never modified."""
    root = tmp_path_factory.mktemp("tiny")
    return PerFamily(lambda family: build_tiny_classifier(root / family, family))


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory) -> Mapping[str, Path]:
    """One tiny base model (no classification head) per family, for training tests."""
    root = tmp_path_factory.mktemp("bases")
    return PerFamily(lambda family: build_tiny_base(root / family, family))


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory, tiny_models) -> Mapping[str, Path]:
    """The fp32 ONNX export of each tiny model."""
    from clsx.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("exports")
    return PerFamily(
        lambda family: export_onnx(tiny_models[family], root / f"{family}-onnx").output)


@pytest.fixture(scope="session")
def tiny_openvino(tmp_path_factory, tiny_models) -> Mapping[str, Path]:
    """The OpenVINO IR export of each tiny model."""
    from clsx.export.openvino import export_openvino

    root = tmp_path_factory.mktemp("openvino")
    return PerFamily(
        lambda family: export_openvino(tiny_models[family], root / f"{family}-ov").output)


@pytest.fixture
def qwen2_copy(tiny_models, tmp_path) -> Path:
    """A per-test copy of the tiny Qwen2 model, free to modify."""
    return Path(shutil.copytree(tiny_models["qwen2"], tmp_path / "qwen2"))


def templated_copy(model: Path, directory: Path, template: str) -> Path:
    """A copy of ``model`` in ``directory`` whose manifest applies ``template``."""
    shutil.copytree(model, directory)
    Manifest.load(directory).replace(template=template).save(directory)
    return directory


@pytest.fixture
def fake_runner(monkeypatch, tmp_path_factory) -> type[FakeRunner]:
    """Run this test's torch backend on :class:`~tests.fakes.FakeRunner`: clsx still opens
    the real artifact (config, tokenizer, manifest), but no torch model loads.

    It goes through clsx's backend registry, so ``--backend torch``, ``--backend auto`` and
    ``--backend auto``'s dtype probe on CPUs with native bf16 (clsx.auto.dtype opens the
    torch backend by name) all get the fake. That probe's choice is cached under
    CLSX_CACHE: it points at a fresh directory, so that no choice measured on the fake
    reaches the real cache. Returns the class, whose ``opened`` lists this test's instances
    (the last one is the one that classified).
    """
    import clsx.inference.runners

    monkeypatch.setitem(clsx.inference.runners.RUNNERS, FAKE_BACKEND, FAKE_RUNNER)
    monkeypatch.setattr(FakeRunner, "opened", [])
    monkeypatch.setenv("CLSX_CACHE", str(tmp_path_factory.mktemp("fake-cache")))
    return FakeRunner


def write_parquet(path: Path, texts: list[str | None] | pa.Array, **columns) -> Path:
    """A Parquet file with an ``id`` column, the texts, and any extra columns."""
    table = pa.table({"id": list(range(len(texts))), "text": texts, **columns})
    pq.write_table(table, path)
    return path


def run_clsx(*args: object) -> Result:
    """``clsx ARGS`` in this process, through click (paths and numbers become strings)."""
    return CliRunner().invoke(main, [str(arg) for arg in args])


def predict(*args: object) -> Result:
    """``clsx batch-predict ARGS --quiet`` in this process."""
    return run_clsx("batch-predict", *args, "--quiet")


@dataclass(frozen=True)
class FakeRun:
    """One ``clsx batch-predict`` on the fake runner: the command's result, OUT (None when it
    failed) and the runner that classified (None when none opened)."""

    result: Result
    table: pa.Table | None
    runner: FakeRunner | None

    @property
    def rows(self) -> list[list[int]]:
        """The model inputs the scheduler handed the runner, unpadded, in the order it handed
        them over (longest first within each window)."""
        return self.runner.rows if self.runner is not None else []


def predict_on_fake(fake: type[FakeRunner], directory: Path, model: Path,
                    texts: Sequence[str | None], *options: object) -> FakeRun:
    """Classify ``texts`` with ``model`` on the fake runner (the ``fake_runner`` fixture's
    class) in a new folder under ``directory``; ``options`` are batch-predict's."""
    folder = Path(tempfile.mkdtemp(dir=directory))
    out = folder / "out.parquet"
    before = len(fake.opened)
    # Typed: a list of only None would otherwise make a null column, not a text one.
    source = write_parquet(folder / "in.parquet", pa.array(list(texts), pa.string()))
    result = predict(source, out, "-m", model, *options)
    # With --backend auto, a dtype probe may open instances first: the run's is the last.
    opened = fake.opened[before:]
    return FakeRun(result, pq.read_table(out) if result.exit_code == 0 else None,
                   opened[-1] if opened else None)


def fake_clsx_command(*args: object, delay_s: float = 0.0) -> list[str]:
    """The command line of a clsx subprocess whose torch backend is the fake (run it with
    ``cwd=ROOT``); ``delay_s`` per batch gives a test time to interrupt it."""
    return [sys.executable, "-m", "tests.fake_clsx", "--fake-delay", str(delay_s),
            *map(str, args)]


def fixed_format_clock(monkeypatch: pytest.MonkeyPatch, seconds: Mapping[str, float]) -> None:
    """Time ``--backend auto``'s format search on a fixed clock: every candidate still opens,
    classifies the probe texts and is gated, but takes ``seconds[name]`` (``torch fp32``,
    ``vllm fp32``, ``openvino fp32``, ``onnx``, ``onnx-int8``, ``openvino-int8``, ...; a
    candidate not named takes ten times the slowest named one), so that the choice is known
    in advance rather than left to this CPU."""
    from clsx.auto import formats

    def timed(classifier, texts: list[str]) -> tuple[object, float]:
        fmt, precision = classifier.manifest.format, classifier.runner.precision
        name = fmt if fmt in ("onnx", "onnx-int8", "openvino-int8") else (
            f"{classifier.runner.description.split(' (')[0]} {precision}")
        return classifier.predict_all(texts).logits, seconds.get(name, 10 * max(seconds.values()))

    monkeypatch.setattr(formats, "_timed", timed)


def interrupted_then_resumed(source: Path, out: Path, model: Path, windows: int,
                             monkeypatch: pytest.MonkeyPatch, *options: str,
                             before_resume: Callable[[], None] = lambda: None) -> str:
    """Run ``batch-predict`` until the machine "goes away" (an OSError) after ``windows``
    windows, call ``before_resume``, then ``--resume``: the resumed run's output lines."""
    from clsx.inference.classifier import Classifier

    real, calls = Classifier.predict_encoded, []

    def dies(self, window):
        calls.append(1)
        if len(calls) > windows:
            raise OSError("the machine went away")
        return real(self, window)

    monkeypatch.setattr(Classifier, "predict_encoded", dies)
    assert predict(source, out, "-m", model, *options).exit_code != 0
    monkeypatch.setattr(Classifier, "predict_encoded", real)
    before_resume()
    resumed = predict(source, out, "-m", model, *options, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "continued after" in resumed.output
    return resumed.output


@pytest.fixture
def texts_parquet(tmp_path) -> Path:
    return write_parquet(tmp_path / "in.parquet", TEXTS * 5 + [None])


@pytest.fixture(scope="session", autouse=True)
def fp32_when_auto():
    """``--backend auto`` tries bf16 only where the CPU computes it natively, which varies
    between this project's machines: tests pin fp32 in this process (session-wide, so that
    module-scoped reference runs get it too) so that results do not depend on the CPU.
    tests/test_autoselect.py covers the choice itself (and its format search, which
    this pins the same way, test_autoformat.py); subprocesses and Ray actors are not
    covered and pass --dtype where they compare with this process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("clsx.auto.dtype.native_low_precision", lambda device: ())
        patch.setattr("clsx.auto.formats.native_low_precision", lambda device: ())
        yield


# The slowest files first. `make test` runs two pytest-xdist workers that each take a whole
# file at a time (--dist loadfile); a long file started last would run alone at the end.
SLOW_FILES_FIRST = ("test_vllm.py", "test_storage.py", "test_ray.py", "test_ray_cluster.py",
                    "test_resume.py",
                    "test_sweep.py", "test_autoformat.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
