"""``clsx batch-predict`` end to end through click, and every bad input it must refuse.

Backends are compared on real models (torch against ONNX); everything else here is about
scheduling, files and columns, and runs on the fake runner (``tests/fakes.py``).
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clsx.artifacts.manifest import Manifest
from clsx.testing.tiny_models import build_tiny_classifier
from tests.conftest import TEXTS, predict, write_parquet  # test_ray imports predict from here


def only_files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("family", ["qwen2", "bert"])
def test_torch_and_onnx_write_the_same_rows_in_order(family, tiny_models, tiny_exports,
                                                      texts_parquet, tmp_path):
    outputs = {}
    for backend, model in (("torch", tiny_models[family]), ("onnx", tiny_exports[family])):
        out = tmp_path / f"{backend}.parquet"
        result = predict(texts_parquet, out, "--model", model, "--backend", backend,
                         "--window-rows", "7", "--batch-tokens", "64")
        assert result.exit_code == 0, result.output
        assert "41 rows in" in result.output and f"backend {backend}" in result.output
        assert "1 null texts, 5 truncated" in result.output
        outputs[backend] = pq.read_table(out)
    torch_out, onnx_out = outputs["torch"], outputs["onnx"]
    assert torch_out.schema == onnx_out.schema
    assert torch_out.schema.names == ["id", "text", "label", "score", "probs"]
    assert str(torch_out.schema.field("probs").type) == "list<element: float>"
    assert torch_out["id"].to_pylist() == list(range(41))
    assert torch_out["text"].equals(pq.read_table(texts_parquet)["text"])
    assert torch_out["label"].to_pylist() == onnx_out["label"].to_pylist()
    np.testing.assert_allclose(torch_out["score"].to_numpy(zero_copy_only=False),
                               onnx_out["score"].to_numpy(zero_copy_only=False), atol=1e-4)
    last = torch_out.slice(40).to_pylist()[0]
    assert last["label"] is None and last["score"] is None and last["probs"] is None
    first = torch_out.slice(0, 1).to_pylist()[0]
    assert first["label"] in ("negative", "neutral", "positive")
    assert abs(sum(first["probs"]) - 1) < 1e-5 and max(first["probs"]) == first["score"]


def test_window_size_does_not_change_results(tiny_models, tmp_path, fake_runner):
    texts = [f"review number {i} " + "good " * (i % 13) for i in range(500)]
    source = write_parquet(tmp_path / "in.parquet", texts)
    tables = []
    for window in ("1", "33", "4096"):
        out = tmp_path / f"w{window}.parquet"
        result = predict(source, out, "-m", tiny_models["llama"], "--window-rows", window)
        assert result.exit_code == 0, result.output
        tables.append(pq.read_table(out))
    assert tables[0]["id"].to_pylist() == list(range(500))
    assert len(set(tables[0]["score"].to_pylist())) > 100  # rows differ: a swap would show
    for table in tables[1:]:
        assert table.equals(tables[0])  # the fake's logits depend on each row alone: exact


def test_directory_and_glob_inputs_are_read_in_sorted_order(tiny_models, tmp_path,
                                                            fake_runner):
    folder = tmp_path / "parts"
    folder.mkdir()
    write_parquet(folder / "b.parquet", ["second file"], part=["b"])
    write_parquet(folder / "a.parquet", ["first file", "still first"], part=["a", "a"])
    for spec in (folder, folder / "*.parquet"):
        out = tmp_path / "out.parquet"
        result = predict(spec, out, "-m", tiny_models["bert"], "--keep-columns", "part",
                         "--overwrite")
        assert result.exit_code == 0, result.output
        table = pq.read_table(out)
        assert table.schema.names == ["part", "label", "score", "probs"]
        assert table["part"].to_pylist() == ["a", "a", "b"]


def test_dictionary_encoded_text_and_output_prefix(tiny_models, tmp_path, fake_runner):
    texts = pa.array(["good", "bad", "good"]).dictionary_encode()
    source = tmp_path / "dict.parquet"
    pq.write_table(pa.table({"text": texts, "label": ["x", "y", "z"]}), source)
    out = tmp_path / "out.parquet"
    result = predict(source, out, "-m", tiny_models["qwen2"], "--output-prefix", "pred_")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.schema.names == ["text", "label", "pred_label", "pred_score", "pred_probs"]
    assert table["pred_label"][0] == table["pred_label"][2]


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_other_problem_types(problem_type, tmp_path, fake_runner):
    model = build_tiny_classifier(tmp_path / "m", "bert", problem_type=problem_type)
    source = write_parquet(tmp_path / "in.parquet", TEXTS)
    out = tmp_path / "out.parquet"
    assert predict(source, out, "-m", model).exit_code == 0
    rows = pq.read_table(out).to_pylist()
    if problem_type == "regression":
        assert all(r["label"] is None and r["probs"] == [r["score"]] for r in rows)
    else:
        for r in rows:
            chosen = [lab for lab, p in zip(("negative", "neutral", "positive"), r["probs"],
                                            strict=True) if p >= 0.5]
            assert r["label"] == ",".join(chosen) and r["score"] == max(r["probs"])


def test_multi_label_uses_the_tuned_thresholds_unless_one_is_given(tmp_path, fake_runner):
    model = build_tiny_classifier(tmp_path / "m", "bert",
                                  problem_type="multi_label_classification")
    manifest = Manifest.load(model)
    manifest.replace(thresholds=(0.99, 0.01, 0.5)).save(model)
    source = write_parquet(tmp_path / "in.parquet", ["good", "bad", "fine"])
    tuned, single = tmp_path / "tuned.parquet", tmp_path / "single.parquet"
    assert predict(source, tuned, "-m", model).exit_code == 0
    assert predict(source, single, "-m", model, "--threshold", "0.5").exit_code == 0
    labels = ("negative", "neutral", "positive")
    for row in pq.read_table(tuned).to_pylist():
        expected = [lab for lab, p in zip(labels, row["probs"], strict=True)
                    if p >= {"negative": 0.99, "neutral": 0.01, "positive": 0.5}[lab]]
        assert row["label"] == ",".join(expected) and "neutral" in row["label"]
    for row in pq.read_table(single).to_pylist():
        expected = [lab for lab, p in zip(labels, row["probs"], strict=True) if p >= 0.5]
        assert row["label"] == ",".join(expected)


def test_existing_output_is_kept_without_overwrite(tiny_models, texts_parquet, tmp_path,
                                                  fake_runner):
    out = tmp_path / "out.parquet"
    out.write_bytes(b"precious")
    result = predict(texts_parquet, out, "-m", tiny_models["bert"])
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert out.read_bytes() == b"precious"


def test_output_equal_to_input_is_refused(tiny_models, texts_parquet, fake_runner):
    result = predict(texts_parquet, texts_parquet, "-m", tiny_models["bert"], "--overwrite")
    assert result.exit_code == 1 and "also an input file" in result.output


def test_failure_midway_leaves_no_output(tiny_models, texts_parquet, tmp_path, monkeypatch,
                                         fake_runner):
    def explode(self, input_ids, attention_mask):
        raise KeyboardInterrupt

    monkeypatch.setattr(fake_runner, "predict", explode)
    result = predict(texts_parquet, tmp_path / "out.parquet", "-m", tiny_models["bert"])
    assert result.exit_code == 130 and "no partial output" in result.output
    assert only_files(tmp_path) == ["in.parquet"]


def test_export_without_parent_still_runs(tiny_exports, texts_parquet, tmp_path):
    moved = shutil.copytree(tiny_exports["bert"], tmp_path / "shipped")
    (tmp_path / "shipped" / "clsx.json").write_text(
        (tiny_exports["bert"] / "clsx.json").read_text().replace('"parent": "', '"parent": "gone/')
    )
    assert predict(texts_parquet, tmp_path / "o.parquet", "-m", moved).exit_code == 0


def test_auto_backend_under_the_fake_never_loads_a_torch_model(tiny_models, texts_parquet,
                                                               tmp_path, monkeypatch,
                                                               fake_runner):
    """``--backend auto`` on a torch model probes dtypes by opening the torch backend where
    the CPU has native bf16: that probe, too, must get the fake (bf16 forced here, whatever
    this CPU has), or the fast tests would quietly load models again."""
    import clsx.auto.dtype
    import clsx.inference.runners.torch

    def refuse(*args, **kwargs):
        raise AssertionError("a real torch model was loaded under the fake runner")

    monkeypatch.setattr(clsx.auto.dtype, "native_low_precision", lambda device: ("bf16",))
    monkeypatch.setattr(clsx.inference.runners.torch.TorchRunner, "__init__", refuse)
    result = predict(texts_parquet, tmp_path / "out.parquet", "-m", tiny_models["bert"])
    assert result.exit_code == 0, result.output
    assert "backend fake (" in result.output
    assert [runner.dtype for runner in fake_runner.opened][:2] == ["fp32", "bf16"]  # the probe
    # Then the run itself (either dtype: the fake's two are equally fast), with its
    # re-check's fp32 reference below fp32.
    assert [runner.dtype for runner in fake_runner.opened][2:] in (["fp32"], ["bf16", "fp32"])
