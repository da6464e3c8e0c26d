"""HTML reports (``clsx eval --report``, ``clsx bench --report``): built from synthetic
results (no model), checked as markup and, where Chromium is installed, as a person sees
them in a real headless browser; then one CLI run of each on the tiny models."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from clsx.artifacts.manifest import Manifest
from clsx.errors import ClsxError
from clsx.evaluation.bench import BenchRow
from clsx.evaluation.config import EvalConfig
from clsx.evaluation.evaluate import EvalResult, score
from clsx.inference.decisions import MULTI, SINGLE, DecisionRule
from clsx.io.tables import LabelledData
from clsx.quality.calibration import ECE_BINS, reliability
from clsx.reports.bench import bench_report
from clsx.reports.eval import eval_report
from clsx.reports.page import check_report_path, write_report
from tests.conftest import ROOT, TEXTS, run_clsx, write_parquet

# Text and labels that break a page (or a matplotlib label) unless escaped.
HOSTILE_TEXT = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
LABELS = ("negative", "<b>neutral</b>", "$5 & up")
CONTEXT = {"command": "clsx eval --report r.html", "created": "2026-11-30T12:00:00+00:00"}
PNG = b"\x89PNG\r\n\x1a\n"


def synthetic_result(problem_type: str, rows: int = 120, seed: int = 0) -> EvalResult:
    """An EvalResult scored by clsx's own code (:func:`clsx.evaluation.evaluate.score`) on random
    logits that mostly agree with random gold labels."""
    rng = np.random.default_rng(seed)
    texts = [HOSTILE_TEXT if i % 7 == 0 else f"review number {i} " * (1 + i % 5)
             for i in range(rows)]
    labels = LABELS if problem_type != "regression" else ("value",)
    if problem_type == SINGLE:
        targets = rng.integers(0, len(labels), rows)
        logits = rng.normal(0, 1.5, (rows, len(labels)))
        logits[np.arange(rows), targets] += 1.5
        gold = [labels[t] for t in targets]
    elif problem_type == MULTI:
        targets = (rng.random((rows, len(labels))) < 0.4).astype(np.float32)
        logits = rng.normal(0, 1.5, targets.shape) + 2.5 * (targets - 0.5)
        gold = [",".join(np.array(labels)[row.astype(bool)]) for row in targets]
    else:
        targets = rng.normal(3, 1, rows).astype(np.float32)
        logits = (targets + rng.normal(0, 0.5, rows))[:, None]
        gold = targets.tolist()
    table = pa.table({"text": texts, "label": gold})
    manifest = Manifest(family="bert", labels=labels, problem_type=problem_type,
                        max_length=128, pad_token_id=0, base_model="minilm-l6",
                        template=HOSTILE_TEXT + " {text}",
                        training={"method": "lora", "lr": 5e-4, "epochs": 3,
                                  "target_modules": ["query", "value"]},
                        parity={"fp32": {"rows": 32, "max_abs_diff": 2.1e-6,
                                         "label_agreement": 1.0}})
    config = EvalConfig(model=Path("models/reviews <v2>"), data=Path("data/test.parquet"))
    labelled = LabelledData(texts, targets, labels, table)
    return score(config, manifest, labelled, logits.astype(np.float32),
                 DecisionRule.of(manifest))


def bench_rows() -> list[BenchRow]:
    def row(variant: str, backend: str, rows_per_s: float, diff: float,
            agreement: float) -> BenchRow:
        return BenchRow(variant=variant, backend=backend, rows=500, seconds=500 / rows_per_s,
                        rows_per_s=rows_per_s, tokens_per_s=rows_per_s * 23.5,
                        peak_rss_mb=900 + rows_per_s, label_agreement=agreement,
                        per_label_agreement=None, max_abs_diff=diff,
                        speedup=round(rows_per_s / 120.0, 2))

    return [row("torch", "torch (fp32, cpu)", 120.0, 0.0, 1.0),
            row("onnx", "onnx (CPUExecutionProvider)", 150.0, 1.4e-6, 1.0),
            row("onnx-int8", "onnx-int8 <int8 & fp32>", 310.0, 0.21, 0.984)]


MACHINE = {"CPU": "AMD EPYC <test>", "cores": "2 physical, 2 logical",
           "CPU flags": "avx avx2 fma avx512f", "GPU": "none"}


class Page(HTMLParser):
    """What a reader of the page meets: headings, images, links, scripts and visible text."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self._heading = False
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
        self.links += [value or "" for name, value in attrs if name in ("href", "src")
                       and tag != "img"]
        self._heading = tag in ("h1", "h2", "h3")

    def handle_endtag(self, tag: str) -> None:
        self._heading = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._heading:
            self.headings.append(data)


def assert_self_contained(document: str) -> Page:
    """Every picture an inline PNG, nothing fetched, no script, user text escaped."""
    parsed = Page(document)
    assert parsed.images, "the report has no pictures"
    for img in parsed.images:
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
        assert img.get("alt")
    assert parsed.links == []
    assert not re.search(r"https?:", document), "the page refers to the network"
    assert "script" not in parsed.tags and "<script" not in document
    return parsed


@pytest.mark.parametrize("problem_type, sections", [
    (SINGLE, ["Per-class precision, recall and F1", "Confusion matrix", "Calibration",
              "Most confident errors"]),
    (MULTI, ["Per-label precision, recall and F1", "Calibration", "Most confident errors"]),
    ("regression", ["Predicted vs true", "Largest errors"]),
])
def test_eval_report_sections_images_and_escaping(problem_type, sections):
    result = synthetic_result(problem_type)
    document = eval_report(result, CONTEXT)
    parsed = assert_self_contained(document)
    assert parsed.headings == ["clsx eval: reviews <v2>", "Headline", *sections, "All metrics",
                               "Run", "Model", "Training settings",
                               "Export parity against PyTorch fp32"]
    text = "".join(parsed.text)
    # User data (the template, texts, labels, paths) is on the page as text, never markup.
    assert HOSTILE_TEXT in text and html.escape(HOSTILE_TEXT) in document
    assert "<b>neutral</b>" not in document
    assert "minilm-l6" in text and "query, value" in text and "2.10e-06" in text  # manifest
    assert CONTEXT["command"] in text and "models/reviews <v2>" in text
    pictures = {SINGLE: 4, MULTI: 3, "regression": 1}[problem_type]  # bars, matrix, 2 calib.
    assert len(parsed.images) == pictures
    if problem_type != "regression":
        accuracy = result.metrics.get("accuracy", result.metrics.get("subset_accuracy"))
        assert f"{accuracy:.4g}" in text
        assert f"ECE ({ECE_BINS} bins)" in text


def test_confident_errors_are_the_wrong_rows_most_confident_first():
    result = synthetic_result(SINGLE)
    document = eval_report(result, CONTEXT)
    errors_html = document.split("<h2>Most confident errors</h2>")[1].split("</section>")[0]
    scores = [float(s) for s in re.findall(r'<td class="num">([0-9.]+)</td>', errors_html)]
    wrong = sorted((row["predicted_score"] for row in result.predictions.to_pylist()
                    if not row["correct"]), reverse=True)
    assert len(scores) == min(20, len(wrong)) and len(wrong) > 20
    assert scores == pytest.approx(wrong[:20], abs=5e-5)  # shown to 4 significant digits


def test_reliability_bins_and_ece():
    probability = np.array([0.05, 0.1, 0.5, 0.55, 0.95, 1.0])
    outcome = np.array([False, False, True, False, True, True])
    bins = reliability(probability, outcome, bins=10)
    assert bins.counts.tolist() == [1, 1, 0, 0, 0, 2, 0, 0, 0, 2]  # 1.0 in the last bin
    assert bins.accuracy[5] == 0.5 and bins.confidence[9] == pytest.approx(0.975)
    gaps = [0.05, 0.1, 2 * abs(0.5 - 0.525), 2 * abs(1 - 0.975)]
    assert bins.ece == pytest.approx(sum(gaps) / 6)
    perfect = reliability(np.full(10, 0.75), np.arange(10) < 7.5, bins=4)  # 8 of 10 right
    assert perfect.ece == pytest.approx(0.05)


def test_bench_report_sections_and_figures():
    context = {"command": "clsx bench -m m --data d.parquet --report b.html",
               "model": "models/m", "data": "d.parquet"}
    document = bench_report(bench_rows(), context, MACHINE)
    parsed = assert_self_contained(document)
    assert parsed.headings == ["clsx bench", "Headline", "Throughput",
                               "Faithfulness and memory", "All figures", "Run", "Machine"]
    assert len(parsed.images) == 3  # rows/s + tokens/s, |logit diff|, peak RSS
    text = "".join(parsed.text)
    for expected in ("onnx-int8 <int8 & fp32>", "98.40%", "2.10e-01", "2.58x", "AMD EPYC <test>",
                     "avx512f", context["command"]):
        assert expected in text, expected


def test_bench_report_needs_rows():
    with pytest.raises(ClsxError, match="at least one"):
        bench_report([], {}, MACHINE)


def test_report_paths_that_cannot_be_written(tmp_path):
    with pytest.raises(ClsxError, match="does not exist"):
        check_report_path(tmp_path / "missing" / "report.html")
    with pytest.raises(ClsxError, match="is a directory"):
        check_report_path(tmp_path)
    with pytest.raises(ClsxError, match="report.html failed"):
        write_report(tmp_path / "missing" / "report.html", "<p>x</p>")
    write_report(tmp_path / "report.html", "<p>x</p>")
    assert (tmp_path / "report.html").read_text() == "<p>x</p>"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left


# --- In a real browser -------------------------------------------------------------------

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser",
                                                 "google-chrome") if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no headless browser: install Debian's chromium (make test does, "
                            "as root where apt-get is available)")

# Injected into a copy of the page (reports carry no script): once everything has loaded,
# write what a reader would notice into the DOM, which --dump-dom then prints.
PROBE = """<script>
const errors = [];
window.addEventListener("error", e => errors.push(String(e.message || e.target.outerHTML
    || e.type).slice(0, 200)), true);
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "clsx-probe";
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => [i.alt, i.complete, i.naturalWidth]),
    errors: errors,
    fetched: performance.getEntriesByType("resource").map(r => r.name),
    overflow: document.documentElement.scrollWidth > window.innerWidth,
  });
  document.body.appendChild(out);
});
</script>"""


def browser(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium at a laptop's width, with a throwaway profile in ``directory``."""
    return subprocess.run([BROWSER, "--headless", "--disable-gpu", "--no-sandbox",
                           f"--user-data-dir={directory / 'chromium-profile'}",
                           "--window-size=1280,2000", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def look_at(document: str, directory: Path) -> dict:
    """Open ``document`` in the browser; what the probe saw."""
    path = directory / "probe.html"
    path.write_text(document.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    dom = browser(directory, "--dump-dom", path.as_uri()).stdout
    found = re.search(r'<pre id="clsx-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; the browser printed: {dom[:500]}"
    return json.loads(html.unescape(found.group(1)))


@needs_browser
@pytest.mark.parametrize("kind", [SINGLE, MULTI, "regression", "bench"])
def test_reports_render_in_a_browser(kind, tmp_path):
    document = (bench_report(bench_rows(), CONTEXT, MACHINE) if kind == "bench"
                else eval_report(synthetic_result(kind), CONTEXT))
    seen = look_at(document, tmp_path)
    assert seen["errors"] == [] and seen["fetched"] == []
    assert len(seen["images"]) == document.count("<img ")
    for alt, complete, width in seen["images"]:
        assert complete and width > 0, f"image {alt!r} did not load"
    assert not seen["overflow"], "the page is wider than a 1280-pixel window"


@needs_browser
def test_the_browser_check_sees_a_broken_image_and_a_fetch(tmp_path):
    """The probe itself can fail: a damaged PNG and a page that reaches for a file."""
    document = bench_report(bench_rows(), CONTEXT, MACHINE)
    damaged = re.sub(r"base64,[^\"]{40}", "base64,AAAA", document, count=1)
    fetching = damaged.replace("</main>", '<img src="missing.png" alt="missing"></main>')
    seen = look_at(fetching, tmp_path)
    loaded = {alt: width > 0 for alt, _, width in seen["images"]}
    assert loaded["missing"] is False and list(loaded.values()).count(False) == 2
    assert seen["errors"]


# --- The commands --------------------------------------------------------------------------

def test_eval_report_command(tiny_models, tmp_path):
    texts = [text for text in TEXTS if text.strip()] * 3
    data = write_parquet(tmp_path / "data.parquet", texts,
                         label=[("negative", "neutral", "positive")[i % 3]
                                for i in range(len(texts))])
    report = tmp_path / "eval.html"
    result = run_clsx("eval", "-m", tiny_models["bert"], "--data", data, "--backend", "torch",
                      "--report", report)
    assert result.exit_code == 0, result.output
    assert f"Wrote {report}" in result.output
    parsed = assert_self_contained(report.read_text(encoding="utf-8"))
    assert "Confusion matrix" in parsed.headings and len(parsed.images) == 4
    text = "".join(parsed.text)
    assert f"clsx eval -m {tiny_models['bert']} --data {data}" in text  # the command as typed


def test_bench_report_command(tiny_models, tiny_exports, tmp_path):
    data = write_parquet(tmp_path / "data.parquet", TEXTS * 5)
    exports, report = tmp_path / "exports", tmp_path / "bench.html"
    shutil.copytree(tiny_exports["bert"], exports / "onnx")  # reused: no export in the test
    result = run_clsx("bench", "-m", tiny_models["bert"], "--data", data, "--backends",
                      "torch,onnx", "--rows", "20", "--exports-dir", exports, "--report", report)
    assert result.exit_code == 0, result.output
    parsed = assert_self_contained(report.read_text(encoding="utf-8"))
    text = "".join(parsed.text)
    assert "torch (fp32, cpu)" in text and "--backends torch,onnx" in text
    assert len(parsed.images) == 3


def test_report_path_is_checked_before_the_work(tiny_models, tmp_path):
    data = write_parquet(tmp_path / "data.parquet", TEXTS)
    result = run_clsx("bench", "-m", tiny_models["bert"], "--data", data, "--report",
                      tmp_path / "no-such-dir" / "bench.html")
    assert result.exit_code == 1
    assert "directory" in result.output and "does not exist" in result.output
    assert "bench: running" not in result.output


def test_help_does_not_import_matplotlib():
    code = ("import sys; from click.testing import CliRunner; from clsx.cli import main; "
            "assert all(CliRunner().invoke(main, [c, '--help']).exit_code == 0 "
            "for c in ('eval', 'bench')); print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"
