"""The Python API (``clsx.load``, ``clsx.batch_predict``) against ``clsx batch-predict``, and
every code block of the README's "Python API" section.

The subject is the API's plumbing, not the model: everything runs on the fake runner.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import clsx
from clsx.artifacts.manifest import Manifest
from clsx.testing.tiny_models import build_tiny_classifier
from tests.conftest import ROOT, TEXTS, predict, predict_on_fake, write_parquet

API_TEXTS = [*TEXTS, None]
README_MODEL = '"my-model"'  # the model directory the README's examples name


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """A model per problem type, each with settings the decision rule must apply: a
    calibration temperature (single-label), tuned thresholds (multi-label).

    The multi-label one is the tiny BERT with a multi-label manifest: the fake runner reads
    only the manifest (the head's three outputs are the same), so no second model is built.
    """
    root = tmp_path_factory.mktemp("api-models")
    single, multi = (Path(shutil.copytree(tiny_models["bert"], root / name))
                     for name in ("single", "multi"))
    Manifest.load(single).replace(temperatures=(1.7,)).save(single)
    Manifest.load(multi).replace(problem_type="multi_label_classification",
                                 thresholds=(0.99, 0.01, 0.5)).save(multi)
    regression = build_tiny_classifier(root / "regression", "bert", problem_type="regression")
    return {"single": single, "multi": multi, "regression": regression}


def test_import_clsx_imports_neither_torch_nor_pyarrow():
    script = ("import sys, clsx; light = not {'torch', 'pyarrow'} & set(sys.modules); "
              "from clsx import load, batch_predict, ClsxError; "
              "print(light, 'torch' in sys.modules, ClsxError.__module__)")
    shown = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    assert shown.split() == ["True", "False", "clsx.errors"]


@pytest.mark.parametrize(("kind", "decisions"),
                         [("single", "label"), ("multi", "labels"), ("regression", "score")])
def test_predict_gives_batch_predicts_decisions_and_probs(kind, decisions, models, tmp_path,
                                                          fake_runner):
    run = predict_on_fake(fake_runner, tmp_path, models[kind], API_TEXTS)
    assert run.result.exit_code == 0, run.result.output
    with clsx.load(models[kind]) as model:
        assert model.predict(API_TEXTS) == run.table[decisions].to_pylist()
        probs = model.predict_proba(API_TEXTS)
        assert f"backend {model.backend};" in run.result.output
    expected = np.array([row or [np.nan] * probs.shape[1]
                         for row in run.table["probs"].to_pylist()], dtype=np.float32)
    np.testing.assert_array_equal(probs, expected)
    assert probs.dtype == np.float32 and np.isnan(probs[-1]).all()


def test_predict_takes_a_series_with_missing_texts_and_refuses_a_lone_string(models,
                                                                             fake_runner):
    with clsx.load(models["single"]) as model:
        series = pd.Series(["great", np.nan, None, "bad"])
        assert model.predict(series) == [*model.predict(["great"]), None, None,
                                         *model.predict(["bad"])]
        assert model.predict([]) == [] and model.predict_proba([]).shape == (0, 3)
        with pytest.raises(clsx.ClsxError, match="not one string"):
            model.predict("great")
        with pytest.raises(clsx.ClsxError, match="must be strings"):
            model.predict(["great", 3])


@pytest.mark.parametrize("kind", ["multi", "single"])
def test_classify_returns_the_type_it_was_given_with_batch_predicts_columns(kind, models,
                                                                            tmp_path,
                                                                            fake_runner):
    source = write_parquet(tmp_path / "in.parquet", pa.array(API_TEXTS, pa.string()))
    out = tmp_path / "out.parquet"
    assert predict(source, out, "-m", models[kind]).exit_code == 0
    table = pq.read_table(source)
    frame = table.to_pandas().set_axis(range(100, 100 + table.num_rows))
    with clsx.load(models[kind]) as model:
        classified_table = model.classify(table)
        classified_frame = model.classify(frame)
    assert classified_table.equals(pq.read_table(out))
    assert isinstance(classified_frame, pd.DataFrame)
    expected = pq.read_table(out).to_pandas().set_axis(frame.index)
    pd.testing.assert_frame_equal(classified_frame, expected)
    assert frame.columns.tolist() == ["id", "text"]  # the input is left as it was


def test_classify_checks_columns_and_takes_an_output_prefix(models, fake_runner):
    frame = pd.DataFrame({"review": ["good", "bad"], "label": ["positive", "negative"]})
    with clsx.load(models["single"], windows_column=True) as model:
        with pytest.raises(clsx.ClsxError, match=r"no column 'text'; its columns are "
                                                 r"review, label \(choose one"):
            model.classify(frame)
        with pytest.raises(clsx.ClsxError, match="already has column 'label'.*output_prefix"):
            model.classify(frame, text_column="review")
        with pytest.raises(clsx.ClsxError, match="column 'text' holds int64, not text"):
            model.classify(frame.assign(text=[1, 2]))
        with pytest.raises(clsx.ClsxError, match="pyarrow Table or a pandas DataFrame"):
            model.classify(frame.to_dict())
        named = model.classify(pa.Table.from_pandas(frame), "review", output_prefix="pred_")
    assert named.column_names == ["review", "label", "pred_label", "pred_score",
                                  "pred_probs", "pred_windows"]


def test_close_releases_the_backend_once(models, fake_runner, monkeypatch):
    closed = []
    monkeypatch.setattr(fake_runner, "close", lambda self: closed.append(self))
    with clsx.load(models["single"]) as model:
        model.predict(["still open"])
        assert not closed
    assert closed == [fake_runner.opened[-1]]
    model.close()
    assert len(closed) == 1
    with pytest.raises(clsx.ClsxError, match="closed"):
        model.predict(["too late"])


def test_options_are_checked_before_the_model_opens(models, tmp_path, fake_runner):
    with pytest.raises(clsx.ClsxError, match=r"load\(\) got unknown option 'treshold'; "
                                             r"known options: batch_tokens, .*threshold"):
        clsx.load(models["single"], treshold=0.7)
    with pytest.raises(clsx.ClsxError, match="--threshold must be between 0 and 1, got 2"):
        clsx.load(models["multi"], threshold=2)
    with pytest.raises(clsx.ClsxError, match="--device must be one of auto, cpu, cuda, got 'gpu'"):
        clsx.load(models["single"], device="gpu")
    with pytest.raises(clsx.ClsxError, match="--dtype must be one of fp32, bf16, fp16"):
        clsx.load(models["single"], dtype="int4")
    with pytest.raises(clsx.ClsxError, match=r"unknown option 'workers'; .*num_workers"):
        clsx.batch_predict("in.parquet", tmp_path / "out.parquet", model=models["single"],
                           workers=2)
    assert fake_runner.opened == []


def test_batch_predict_writes_what_the_command_writes(models, tmp_path, fake_runner):
    source = write_parquet(tmp_path / "in.parquet", API_TEXTS[:-1], extra=list(range(8)))
    by_cli, by_api = tmp_path / "cli.parquet", tmp_path / "api.parquet"
    assert predict(source, by_cli, "-m", models["multi"], "--keep-columns", "id",
                   "--threshold", "0.3").exit_code == 0
    summary = clsx.batch_predict(source, by_api, model=models["multi"], keep_columns=["id"],
                                 threshold=0.3, output_prefix=None)
    assert summary.rows == 8 and summary.line().endswith(f"wrote {by_api}")
    assert pq.read_table(by_api).equals(pq.read_table(by_cli))
    with pytest.raises(clsx.ClsxError, match="apply to --engine ray only"):
        clsx.batch_predict(source, tmp_path / "ray.parquet", model=models["multi"],
                           num_workers=2)


def readme_python_blocks() -> list[str]:
    """The ```python blocks of the README's "Python API" section, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_every_python_block_of_the_readme_runs(models, tmp_path, monkeypatch, fake_runner):
    blocks = readme_python_blocks()
    assert len(blocks) >= 3 and all(README_MODEL in block for block in blocks)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in blocks:  # one namespace, in order: as a reader runs them in a notebook
        code = block.replace(README_MODEL, repr(str(models["single"])))
        exec(compile(code, "README.md (Python API)", "exec"), namespace)
    assert pq.read_table(tmp_path / "labelled.parquet").column_names == [
        "id", "label", "score", "probs"]
