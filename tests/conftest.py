"""Shared fixtures: tiny random classifiers built once per session, copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clsx.testing import FAMILIES, build_tiny_base, build_tiny_classifier

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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny single-label classifier per family (qwen2, llama, bert), never modified."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_classifier(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory) -> dict[str, Path]:
    """One tiny base model (no classification head) per family, for training tests."""
    root = tmp_path_factory.mktemp("bases")
    return {family: build_tiny_base(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """The fp32 ONNX export of each tiny model."""
    from clsx.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("exports")
    return {
        family: export_onnx(model, root / f"{family}-onnx").output
        for family, model in tiny_models.items()
    }


@pytest.fixture
def qwen2_copy(tiny_models, tmp_path) -> Path:
    """A per-test copy of the tiny Qwen2 model, free to modify."""
    return Path(shutil.copytree(tiny_models["qwen2"], tmp_path / "qwen2"))


def write_parquet(path: Path, texts: list[str | None], **columns) -> Path:
    """A Parquet file with an ``id`` column, the texts, and any extra columns."""
    table = pa.table({"id": list(range(len(texts))), "text": texts, **columns})
    pq.write_table(table, path)
    return path


@pytest.fixture
def texts_parquet(tmp_path) -> Path:
    return write_parquet(tmp_path / "in.parquet", TEXTS * 5 + [None])


@pytest.fixture(scope="session", autouse=True)
def fp32_when_auto():
    """``--backend auto`` tries bf16 only where the CPU computes it natively, which varies
    between this project's machines: tests pin fp32 in this process (session-wide, so that
    module-scoped reference runs get it too) so that results do not depend on the CPU.
    tests/test_autoselect.py covers the choice itself; subprocesses and Ray actors are not
    covered and pass --dtype where they compare with this process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("clsx.autoselect.native_low_precision", lambda device: ())
        yield
