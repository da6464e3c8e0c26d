"""``--backend auto``'s format search: torch, onnx and onnx-int8 measured on the job's texts,
the fastest that passed its gate run, the choice remembered per model and machine."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from clsx.auto import formats as autoformat
from clsx.auto.formats import LESS_EXACT_MARGIN, pick
from tests.conftest import TEXTS, fixed_format_clock, predict, write_parquet


def measured(**rates: float | None) -> dict[str, dict]:
    """Figures as ``_measure`` records them: rows/s per candidate, None for one its gate
    refused."""
    precision = {"torch fp32": "fp32", "torch bf16": "bf16", "onnx": "fp32", "onnx-int8": "int8",
                 "openvino fp32": "fp32", "openvino bf16": "bf16", "openvino-int8": "int8"}
    figures = {}
    for key, rate in rates.items():
        name = key.replace("_", " ").replace("onnx int8", "onnx-int8")
        figures[name] = ({"precision": precision[name], "qualifies": False, "refused": "gate"}
                         if rate is None else
                         {"precision": precision[name], "qualifies": True, "rows_per_s": rate,
                          "rows": 256})
    return figures


def test_int8_barely_faster_than_fp32_is_not_chosen():
    assert pick(measured(torch_fp32=100.0, onnx=103.0, onnx_int8=105.0)) == "onnx"
    faster = 103.0 * LESS_EXACT_MARGIN + 1
    assert pick(measured(torch_fp32=100.0, onnx=103.0, onnx_int8=faster)) == "onnx-int8"


def test_a_refused_or_failing_candidate_is_never_chosen():
    assert pick(measured(torch_fp32=100.0, onnx=None, onnx_int8=None)) == "torch fp32"
    outside = measured(torch_fp32=100.0, torch_bf16=300.0)
    outside["torch bf16"]["qualifies"] = False
    assert pick(outside) == "torch fp32"


def test_each_less_exact_format_must_beat_the_best_more_exact_one():
    # bf16 is 1.36x torch but only 1.05x onnx fp32: onnx stays; int8 beats onnx by 1.2x.
    figures = measured(torch_fp32=100.0, onnx=130.0, torch_bf16=136.0, onnx_int8=156.0)
    assert pick(figures) == "onnx-int8"
    assert autoformat.explain("onnx-int8", figures) == "1.56x torch fp32 on 256 rows of IN"
    assert autoformat.rates(figures).startswith("rows/s: torch fp32 100.0, onnx 130.0")
    assert pick(measured(torch_fp32=100.0, onnx=130.0, torch_bf16=136.0)) == "onnx"


@pytest.fixture
def big_enough(tiny_models, tmp_path, monkeypatch):
    """IN of 400 texts, a cache of its own, and a copy of the tiny BERT (its exports are
    made from it)."""
    monkeypatch.setenv("CLSX_CACHE", str(tmp_path / "cache"))
    return write_parquet(tmp_path / "in.parquet", (TEXTS * 50)[:400])


def test_auto_formats_runs_the_fastest_gated_format_and_remembers_it(
        tiny_models, big_enough, tmp_path, monkeypatch):
    # int8 only 1.04x onnx fp32: below the margin, so onnx (2x torch) runs where OpenVINO
    # is not installed; where it is with nncf, OpenVINO's int8 (10x, re-checked by OpenVINO
    # fp32 on its own fp32 IR) runs.
    fixed_format_clock(monkeypatch, {"torch fp32": 1.0, "onnx": 0.5, "onnx-int8": 0.48,
                                     "openvino fp32": 0.4, "openvino-int8": 0.1})
    monkeypatch.setattr(autoformat, "installed", lambda package: package != "openvino")
    out = tmp_path / "out.parquet"
    result = predict(big_enough, out, "-m", tiny_models["bert"], "--auto-formats")
    assert result.exit_code == 0, result.output
    assert ("backend onnx (onnx, cpu), onnx chosen by --backend auto: 2.00x torch fp32 on "
            "256 rows of IN") in result.output
    choices = json.loads((tmp_path / "cache" / "auto-format.json").read_text())
    (choice,) = choices.values()
    assert choice["name"] == "onnx"
    assert set(choice["measured"]) == {"torch fp32", "onnx", "onnx-int8"}
    assert all(figures["qualifies"] for figures in choice["measured"].values())
    exports = next((tmp_path / "cache" / "exports").iterdir())
    assert (exports / "onnx" / "model.onnx").is_file()
    # With OpenVINO and nncf: measured again (other candidates), on the exports already
    # made and their own.
    monkeypatch.setattr(autoformat, "installed", lambda package: package in ("openvino", "nncf"))
    with_openvino = predict(big_enough, out, "-m", tiny_models["bert"], "--auto-formats",
                            "--overwrite")
    assert with_openvino.exit_code == 0, with_openvino.output
    assert "openvino-int8, cpu), openvino-int8 chosen by --backend auto: " in with_openvino.output
    assert "to onnx in" not in with_openvino.output  # only the openvino exports are new
    assert (exports / "openvino-int8" / "fp32" / "model.xml").is_file()
    # The same model on the same machine: the remembered choice, without measuring again.
    monkeypatch.setattr(autoformat, "_measure", lambda *args: pytest.fail("measured again"))
    again = predict(big_enough, out, "-m", tiny_models["bert"], "--auto-formats", "--overwrite")
    assert again.exit_code == 0, again.output
    assert "openvino-int8 chosen by --backend auto, remembered: " in again.output
    assert pq.read_table(out).num_rows == 400


def test_small_jobs_and_explicit_backends_do_not_search(tiny_models, big_enough, tmp_path,
                                                       monkeypatch):
    monkeypatch.setattr(autoformat, "_measure", lambda *args: pytest.fail("searched"))
    result = predict(big_enough, tmp_path / "a.parquet", "-m", tiny_models["bert"])
    assert result.exit_code == 0, result.output
    assert "chosen by" not in result.output and "backend torch (fp32, cpu)" in result.output
    explicit = predict(big_enough, tmp_path / "b.parquet", "-m", tiny_models["bert"],
                       "--backend", "torch", "--auto-formats")
    assert explicit.exit_code == 1
    assert "Error: --auto-formats applies to --backend auto without --dtype" in explicit.output


def test_auto_formats_on_an_export_is_refused(tiny_exports, big_enough, tmp_path):
    result = predict(big_enough, tmp_path / "out.parquet", "-m", tiny_exports["bert"],
                     "--auto-formats")
    assert result.exit_code == 1
    assert "applies to a PyTorch model directory;" in result.output
    assert "is already an export (onnx)" in result.output
    assert not (tmp_path / "out.parquet").exists()


def test_a_formats_recheck_share_counts_in_its_time(tiny_models, big_enough, tmp_path,
                                                    monkeypatch):
    """int8 takes 0.5 s where torch fp32 takes 1 s, but its re-check would send half the
    rows to fp32 (0.5 s more): onnx (0.9 s) wins. (Without a re-check share int8 wins at
    these times: test_ray.py's auto-chose test.)"""
    fixed_format_clock(monkeypatch, {"torch fp32": 1.0, "onnx": 0.9, "onnx-int8": 0.5})
    monkeypatch.setattr(autoformat, "rechecked_rows",
                        lambda rule, fast, cut: np.arange(len(fast)) % 2 == 0)
    monkeypatch.setattr(autoformat, "installed", lambda package: False)  # torch and ONNX
    result = predict(big_enough, tmp_path / "out.parquet", "-m", tiny_models["bert"],
                     "--auto-formats")
    assert result.exit_code == 0, result.output
    assert "onnx chosen by --backend auto: 1.11x torch fp32" in result.output
    assert "onnx-int8 256.0" in result.output  # 256 rows in 0.5 s + half of them again


def test_a_format_whose_recheck_cannot_cover_it_is_not_chosen(tiny_models, big_enough,
                                                              tmp_path, monkeypatch):
    """int8 is the fastest, but the probe shows it moving a row further than its re-check
    cut reaches (capped at 0.5): its labels would not all be fp32's, so onnx runs."""
    from clsx.quality.recheck import MAX_MARGIN, RecheckCut

    fixed_format_clock(monkeypatch, {"torch fp32": 1.0, "onnx": 0.9, "onnx-int8": 0.5})
    capped = RecheckCut(MAX_MARGIN, 256, 3, 0, 0.01, 0.04)
    monkeypatch.setattr(autoformat, "recheck_cut", lambda *args: capped)
    monkeypatch.setattr(autoformat, "perturbations",
                        lambda rule, fast, reference: np.where(np.arange(len(fast)) == 7,
                                                               0.6, 0.01))
    # None of the probe rows under the cut: int8 would win on time alone.
    monkeypatch.setattr(autoformat, "rechecked_rows", lambda rule, fast, cut: fast[:, 0] > 1e9)
    monkeypatch.setattr(autoformat, "installed", lambda package: False)  # torch and ONNX
    result = predict(big_enough, tmp_path / "out.parquet", "-m", tiny_models["bert"],
                     "--auto-formats")
    assert result.exit_code == 0, result.output
    assert "onnx chosen by --backend auto" in result.output
    assert "onnx-int8 " in result.output and "(its re-check cannot cover it)" in result.output


def test_an_exports_stored_cut_sets_its_recheck_share():
    """An int8 export re-checks at the cut stored at its gate, not one chosen on the probe:
    the share is timed at that cut (the job then re-checks the same rows)."""
    from clsx.inference.decisions import SINGLE, DecisionRule
    from clsx.quality.recheck import RecheckCut

    rule = DecisionRule(SINGLE, ("a", "b"), (0.5, 0.5))
    fast = np.log(np.array([[0.52, 0.48], [0.6, 0.4], [0.9, 0.1], [0.99, 0.01]], np.float32))
    stored = RecheckCut(0.5, 500, 2, 0, 0.006, 0.05)  # margins 0.04, 0.2, 0.8, 0.98
    cut = autoformat.recheck_cut(rule, fast, fast, stored)
    assert cut == stored
    assert autoformat.rechecked_rows(rule, fast, cut).tolist() == [True, True, False, False]
    # Capped at 0.5, it still covers moves up to 0.5, not beyond.
    assert autoformat.covers(cut, np.float32([0.01, 0.38])) and not autoformat.covers(
        cut, np.float32([0.01, 0.6]))
    chosen = autoformat.recheck_cut(rule, fast, fast, None)
    assert not autoformat.rechecked_rows(rule, fast, chosen).any()  # no flips: no cut
