"""The seed article's claims, measured again with clsx on the shared real datasets.

    python benchmarks/experiments.py                 # every claim (hours on 2 cores)
    python benchmarks/experiments.py --claims 2      # one claim
    python benchmarks/experiments.py --runs bbc-minilm-window,bbc-minilm-truncate
    python benchmarks/experiments.py --report-only   # rewrite EXPERIMENTS.md

Every run is `clsx train` then `clsx eval --predictions` as a user would type them (see
benchmarks/accuracy.py); the test metric gets a 95% bootstrap interval (1,000 resamples of
the test rows). Results accumulate in benchmarks/results/experiments.json, and
benchmarks/EXPERIMENTS.md is rewritten from all of them, with a verdict per claim and the
runs not made yet. Splits are subsampled where a full run would take hours on 2 cores; the
table says how many rows each run used.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clsx.inference.hardware import machine_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402
from accuracy import DATA, Experiment, clsx, run  # noqa: E402
from accuracy import EXPERIMENTS as ACCURACY_EXPERIMENTS  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "experiments.json"
MINILM = ("--batch-size", "16", "--lr", "5e-4")
SMOLLM2 = ("--epochs", "1", "--batch-size", "8", "--lr", "1e-4")
TREC_DESCRIPTIONS = {
    "ABBR": "an abbreviation or what one stands for",
    "DESC": "a description, definition, manner or reason",
    "ENTY": "an entity: animal, colour, food, product, event, ...",
    "HUM": "a person or group of people",
    "LOC": "a location: city, country, mountain, state, ...",
    "NUM": "a number: date, count, distance, money, period, ...",
}
FEW_SHOT = ("Classify the question type.\n"
            "Q: What does NASA stand for? -> ABBR\nQ: Why is the sky blue? -> DESC\n"
            "Q: What is the fastest animal? -> ENTY\nQ: Who invented the telephone? -> HUM\n"
            "Q: Where is the Eiffel Tower? -> LOC\nQ: How tall is Everest? -> NUM\n"
            "Q: {text} ->")


def long_text(model: str, strategy: str) -> Experiment:
    """BBC news (avg 2,264 characters) classified within 128 tokens, one strategy."""
    common = ("--max-length", "128", "--long-text", strategy)
    if model == "minilm-l6":
        return Experiment(f"bbc-minilm-{strategy}", "bbc", model,
                          ("--epochs", "2", *MINILM, *common))
    return Experiment(f"bbc-smollm2-{strategy}", "bbc", model,
                      (*SMOLLM2, *common), train_rows=600, test_rows=300)


# A control for the SmolLM2 runs: `window` trains on every window of a text (about 5 per BBC
# article), so in one epoch it takes about 5x the optimiser steps of `truncate`. Truncation
# trained for 5 epochs gets as many steps, which separates "more text" from "more steps".
def with_epochs(experiment: Experiment, epochs: int, name: str) -> Experiment:
    """``experiment`` under another name, trained for ``epochs`` epochs."""
    args = list(experiment.train_args)
    args[args.index("--epochs") + 1] = str(epochs)
    return replace(experiment, name=name, train_args=tuple(args))


SMOLLM2_TRUNCATE = long_text("smollm2-135m", "truncate")
TRUNCATE_SAME_STEPS = with_epochs(SMOLLM2_TRUNCATE, 5, "bbc-smollm2-truncate-5-epochs")
# A decoder classifies from its last token. Truncated, that token sits mid-sentence in an
# article's opening; a prompt ending gives every input the same last tokens to read.
TRUNCATE_WITH_PROMPT = replace(SMOLLM2_TRUNCATE, name="bbc-smollm2-truncate-prompt",
                               train_args=(*SMOLLM2_TRUNCATE.train_args,
                                           "--template", "{text}\nTopic:"))


@dataclass(frozen=True)
class Claim:
    number: int
    title: str
    runs: tuple[Experiment, ...]
    verdict: Callable[[dict[str, dict]], str]


def paired_difference(correct_a: str, correct_b: str, samples: int = 1000) -> list[float]:
    """95% interval of accuracy(a) - accuracy(b), resampling the same test rows for both.

    ``correct_*`` hold one character per test row, "1" where that run's label was right.
    Pairing removes the rows' shared difficulty from the spread, so this interval is
    narrower than comparing the two runs' own intervals.
    """
    a = np.frombuffer(correct_a.encode(), np.uint8) - ord("0")
    b = np.frombuffer(correct_b.encode(), np.uint8) - ord("0")
    rng = np.random.default_rng(0)
    differences = [(a[rows].mean() - b[rows].mean())
                   for rows in (rng.integers(0, len(a), len(a)) for _ in range(samples))]
    return [round(float(np.percentile(differences, q)), 4) for q in (2.5, 97.5)]


def _better(results: dict[str, dict], a: str, b: str, metric: str = "accuracy") -> str:
    """Whether run ``a`` beat run ``b``, and whether the difference is clear at 95%.

    With both runs' per-row correctness on the same test rows (runs made since it was
    stored), a paired bootstrap of the accuracy difference decides; otherwise the two
    runs' own intervals must not overlap, a more conservative test.
    """
    x, y = results[a], results[b]
    relation = ("equal to" if x[metric] == y[metric] else
                "above" if x[metric] > y[metric] else "below")
    said = f"{a} {x[metric]:.4f} is {relation} {b} {y[metric]:.4f}"
    paired = x.get("correct") and y.get("correct") and len(x["correct"]) == len(y["correct"])
    if metric == "accuracy" and paired:
        low, high = paired_difference(x["correct"], y["correct"])
        clear = low > 0 or high < 0
        return (f"{said} (paired difference {x[metric] - y[metric]:+.4f}, 95% interval "
                f"[{low:+.4f}, {high:+.4f}]{'' if clear else ': no clear difference'})")
    lo_x, hi_x = x[f"{metric}_ci"]
    lo_y, hi_y = y[f"{metric}_ci"]
    clear = lo_x > hi_y or lo_y > hi_x
    return f"{said}{'' if clear else ' (the 95% intervals overlap: no clear difference)'}"


def _pairs(*pairs: tuple[str, str], metric: str = "accuracy"):
    """A verdict comparing each pair of runs that has both results."""
    return lambda results: "; ".join(_better(results, a, b, metric) for a, b in pairs
                                     if a in results and b in results) + "."


CLAIMS = (
    Claim(1, "Short texts: an instruct LLM does not beat a BERT-family model (seed)", (
        Experiment("sst2-minilm-lora", "sst2", "minilm-l6",
                   ("--epochs", "3", *MINILM, "--max-length", "128")),
        Experiment("sst2-smollm2-lora", "sst2", "smollm2-135m",
                   (*SMOLLM2, "--max-length", "128"), train_rows=3000),
        Experiment("trec-minilm-lora", "trec", "minilm-l6",
                   ("--epochs", "3", *MINILM, "--max-length", "128")),
        Experiment("trec-smollm2-lora", "trec", "smollm2-135m",
                   (*SMOLLM2, "--max-length", "128"), train_rows=3000),
    ), _pairs(("sst2-smollm2-lora", "sst2-minilm-lora"),
              ("trec-smollm2-lora", "trec-minilm-lora"))),
    Claim(2, "Long texts: truncation loses accuracy; head-tail and sliding windows recover it "
             "(seed: BERT truncated at 512 lost accuracy; sliding windows untested)",
          (*(long_text(model, strategy) for model in ("minilm-l6", "smollm2-135m")
             for strategy in ("truncate", "head-tail", "window")), TRUNCATE_SAME_STEPS,
           TRUNCATE_WITH_PROMPT),
          _pairs(("bbc-minilm-head-tail", "bbc-minilm-truncate"),
                 ("bbc-minilm-window", "bbc-minilm-truncate"),
                 ("bbc-smollm2-head-tail", "bbc-smollm2-truncate"),
                 ("bbc-smollm2-window", "bbc-smollm2-truncate"),
                 ("bbc-smollm2-window", "bbc-smollm2-truncate-5-epochs"),
                 ("bbc-smollm2-truncate-prompt", "bbc-smollm2-truncate"),
                 ("bbc-smollm2-head-tail", "bbc-smollm2-truncate-prompt"))),
    Claim(3, "Under 10K samples, LoRA beats full fine-tuning (seed)", (
        Experiment("sst2-5k-minilm-lora", "sst2", "minilm-l6",
                   ("--epochs", "3", *MINILM, "--max-length", "128"), train_rows=5000),
        Experiment("sst2-5k-minilm-full", "sst2", "minilm-l6",
                   ("--epochs", "3", "--batch-size", "16", "--lr", "5e-5", "--max-length",
                    "128", "--method", "full"), train_rows=5000),
    ), _pairs(("sst2-5k-minilm-lora", "sst2-5k-minilm-full"))),
    Claim(4, "Label descriptions and few-shot examples in the prompt help an LLM (seed)", (
        Experiment("trec-smollm2-plain", "trec", "smollm2-135m",
                   (*SMOLLM2, "--max-length", "96"), train_rows=1500),
        Experiment("trec-smollm2-descriptions", "trec", "smollm2-135m",
                   (*SMOLLM2, "--max-length", "160", "--template",
                    "Question types:\n{labels}\nQuestion: {text}\nType:",
                    "--label-descriptions", "{root}/trec-descriptions.json"), train_rows=1500),
        Experiment("trec-smollm2-few-shot", "trec", "smollm2-135m",
                   (*SMOLLM2, "--max-length", "160", "--template", FEW_SHOT), train_rows=1500),
    ), _pairs(("trec-smollm2-descriptions", "trec-smollm2-plain"),
              ("trec-smollm2-few-shot", "trec-smollm2-plain"))),
    Claim(5, "Multi-label: GoEmotions macro-F1 with thresholds tuned on dev (target >= 0.46)", (
        ACCURACY_EXPERIMENTS["goemotions-minilm-full"],
    ), lambda r: "; ".join(f"{name} macro-F1 {r[name]['macro_f1']:.4f}: the 0.46 target is "
                           f"{'met' if r[name]['macro_f1'] >= 0.46 else 'not met'}"
                           for name in ["goemotions-minilm-full"] if name in r) + "."),
    Claim(6, "Pseudo-labelling: train on 10% of SST-2, label the rest at confidence >= 0.9, "
             "retrain on both (seed: a gain)", (
        Experiment("sst2-10pct-minilm", "sst2-10pct", "minilm-l6",
                   ("--epochs", "3", *MINILM, "--max-length", "128")),
        Experiment("sst2-10pct-pseudo-minilm", "sst2-10pct-pseudo", "minilm-l6",
                   ("--epochs", "3", *MINILM, "--max-length", "128")),
    ), _pairs(("sst2-10pct-pseudo-minilm", "sst2-10pct-minilm"))),
)
CALIBRATION_TARGET = 0.03  # expected calibration error after temperature scaling


def _calibration_verdict(results: dict[str, dict]) -> str:
    """ECE on the test rows before and after the temperatures fitted on the eval split."""
    verdicts = []
    for experiment in CALIBRATION_RUNS:
        r = results.get(experiment.name)
        if r is None or r.get("ece") is None:
            continue
        verdicts.append(
            f"{experiment.name}: ECE {r['ece_uncalibrated']:.4f} -> {r['ece']:.4f} "
            f"({'meets' if r['ece'] <= CALIBRATION_TARGET else 'misses'} the "
            f"{CALIBRATION_TARGET} target), Brier {r['brier_uncalibrated']:.4f} -> "
            f"{r['brier']:.4f}")
    return "; ".join(verdicts) + "."


# Short runs: calibration is judged on whatever model training gives, so one epoch will do.
CALIBRATION_RUNS = (
    Experiment("sst2-minilm-calibrated", "sst2", "minilm-l6",
               ("--epochs", "1", *MINILM, "--max-length", "128")),
    Experiment("trec-smollm2-calibrated", "trec", "smollm2-135m",
               (*SMOLLM2, "--max-length", "96"), train_rows=1500),
    # The same with 450 held-out rows to fit the temperature on instead of 150.
    Experiment("trec-smollm2-calibrated-450", "trec", "smollm2-135m",
               (*SMOLLM2, "--max-length", "96", "--eval-fraction", "0.3"), train_rows=1500),
    Experiment("goemotions-minilm-calibrated", "goemotions", "minilm-l6",
               ("--epochs", "1", "--batch-size", "32", "--max-length", "64", "--lr", "1e-4",
                "--method", "full", "--problem-type", "multi_label"), train_rows=8000),
)
CLAIMS = (*CLAIMS, Claim(
    7, "Temperature scaling fitted on the eval split gives test ECE <= 0.03 (15 bins)",
    CALIBRATION_RUNS, _calibration_verdict))
RUNS = {experiment.name: (claim, experiment) for claim in CLAIMS for experiment in claim.runs}
# Sections that other scripts measure and write, appended to EXPERIMENTS.md as they stand.
APPENDED = (HERE / "results" / "distill.md",  # benchmarks/distill.py
            HERE / "results" / "sweep_sst2.md",  # benchmarks/sweep_sst2.py
            HERE / "results" / "int8_options.md")  # benchmarks/int8_options.py
PSEUDO_CONFIDENCE = 0.9


def bootstrap(predictions: Path, multi_label: bool, samples: int = 1000) -> dict:
    """95% intervals of accuracy and macro-F1 over resamples of the test rows.

    For a single-label run it also keeps ``correct``, one "0"/"1" per test row, so that
    two runs on the same test rows can be compared pairwise (:func:`paired_difference`).
    """
    from sklearn.metrics import f1_score

    table = pq.read_table(predictions)
    truth, predicted = table.column("label").to_pylist(), table.column("predicted_label")
    if multi_label:
        labels = sorted({label for row in truth for label in row})
        index = {label: i for i, label in enumerate(labels)}
        y = np.zeros((len(truth), len(labels)), bool)
        p = np.zeros_like(y)
        for i, (row, guess) in enumerate(zip(truth, predicted.to_pylist(), strict=True)):
            y[i, [index[label] for label in row]] = True
            p[i, [index[label] for label in (guess or "").split(",") if label in index]] = True
    else:
        y, p = np.array(truth), np.array(predicted.to_pylist())
    rng = np.random.default_rng(0)
    accuracy, macro_f1 = [], []
    for _ in range(samples):
        rows = rng.integers(0, len(y), len(y))
        exact = (y[rows] == p[rows]).all(axis=1) if multi_label else y[rows] == p[rows]
        accuracy.append(exact.mean())
        macro_f1.append(f1_score(y[rows], p[rows], average="macro", zero_division=0))
    intervals: dict = {name: [round(float(np.percentile(values, q)), 4) for q in (2.5, 97.5)]
                       for name, values in (("accuracy_ci", accuracy), ("macro_f1_ci", macro_f1))}
    if not multi_label:
        intervals["correct"] = "".join("1" if ok else "0" for ok in y == p)
    return intervals


def _register_pseudo_labelling(root: Path) -> None:
    """Data for claim 6: 10% of SST-2 train with labels, then that plus pseudo-labels."""
    labelled, hidden = realdata.split_table(realdata.sst2("train"), 0.9)
    DATA["sst2-10pct"] = lambda: (labelled, realdata.sst2("test"), None)

    def with_pseudo_labels():
        unlabelled = root / "sst2-unlabelled.parquet"
        pq.write_table(hidden.select(["text"]), unlabelled)
        guessed = root / "sst2-pseudo.parquet"
        clsx("batch-predict", unlabelled, guessed, "--model", root / "sst2-10pct-minilm",
             "--overwrite", "--quiet")
        table = pq.read_table(guessed)
        confident = pc.greater_equal(table.column("score"), PSEUDO_CONFIDENCE)
        pseudo = table.filter(confident)
        correct = pc.sum(pc.equal(hidden.filter(confident).column("label"),
                                  pseudo.column("label"))).as_py()
        print(f"pseudo-labels: {pseudo.num_rows} of {table.num_rows} rows at confidence >= "
              f"{PSEUDO_CONFIDENCE}, {correct / max(pseudo.num_rows, 1):.2%} correct", flush=True)
        train = pa.concat_tables([labelled, pa.table({"text": pseudo.column("text"),
                                                      "label": pseudo.column("label")})])
        return train, realdata.sst2("test"), None

    DATA["sst2-10pct-pseudo"] = with_pseudo_labels


def run_with_interval(experiment: Experiment, root: Path) -> dict:
    """One run, its bootstrap intervals and the claim it belongs to."""
    train_args = tuple(a.replace("{root}", str(root)) for a in experiment.train_args)
    result = run(replace(experiment, train_args=train_args), root)
    result["train_args"] = list(experiment.train_args)
    multi_label = "multi_label" in experiment.train_args
    result.update(bootstrap(Path(result.pop("predictions")), multi_label))
    result["claim"] = RUNS[experiment.name][0].number
    return result


def _with_pseudo_labeller_first(chosen: list[Experiment]) -> list[Experiment]:
    """The pseudo-labelled run needs the 10% model of the same invocation, made before it."""
    pseudo, labeller = RUNS["sst2-10pct-pseudo-minilm"][1], RUNS["sst2-10pct-minilm"][1]
    if pseudo not in chosen:
        return chosen
    rest = [e for e in chosen if e != labeller]
    return rest[: rest.index(pseudo)] + [labeller] + rest[rest.index(pseudo):]


def markdown(results: dict[str, dict]) -> str:
    lines = ["# The seed article's claims, measured with clsx", "",
             f"Machine: {machine_description()} (no GPU). Regenerate with "
             "`python benchmarks/experiments.py` (or `--claims N`, `--runs NAME,...`). "
             "Each row is `clsx train` + `clsx eval` on the shared datasets; [a, b] is the "
             "95% bootstrap interval over the test rows (1,000 resamples). `train rows` "
             "counts the training file; without a dev split, clsx train holds 10% of it "
             "out to pick the best epoch. A verdict compares two runs by a paired bootstrap "
             "of their accuracy difference on the same test rows where both stored per-row "
             "correctness, else by whether their own intervals overlap (more conservative). "
             "Training arguments: `CLAIMS` in benchmarks/experiments.py.", ""]
    for claim in CLAIMS:
        lines += [f"## {claim.number}. {claim.title}", "",
                  "| run | model | train rows | test rows | accuracy [95% CI] | "
                  "macro-F1 [95% CI] | train min |", "|---|---|---|---|---|---|---|"]
        missing = []
        for experiment in claim.runs:
            r = results.get(experiment.name)
            if r is None:
                missing.append(experiment.name)
                continue
            lines.append(
                f"| {r['experiment']} | {r['model']} | {r['train_rows']} | {r['test_rows']} | "
                f"{r['accuracy']:.4f} [{r['accuracy_ci'][0]:.3f}, {r['accuracy_ci'][1]:.3f}] | "
                f"{r['macro_f1']:.4f} [{r['macro_f1_ci'][0]:.3f}, {r['macro_f1_ci'][1]:.3f}] | "
                f"{r['train_minutes']:.1f} |")
        lines.append("")
        verdict = claim.verdict(results)
        if verdict != ".":
            lines += [f"**Verdict{' so far' if missing else ''}:** {verdict}", ""]
        if missing:
            lines += [f"**Not run yet:** `python benchmarks/experiments.py --runs "
                      f"{','.join(missing)}`.", ""]
    lines += [section.read_text() for section in APPENDED if section.is_file()]
    return "\n".join(lines)


def stored_results() -> dict[str, dict]:
    """Every run's result kept in benchmarks/results/experiments.json."""
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", help="comma-separated claim numbers (default: all)")
    parser.add_argument("--runs", help=f"comma-separated run names, from: {', '.join(RUNS)}")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite EXPERIMENTS.md from the stored results; run nothing")
    args = parser.parse_args()
    if args.report_only:
        chosen = []
    elif args.runs:
        chosen = [RUNS[name][1] for name in args.runs.split(",")]
    else:
        numbers = {int(n) for n in args.claims.split(",")} if args.claims else None
        chosen = [e for c in CLAIMS if numbers is None or c.number in numbers for e in c.runs]
    results = stored_results()
    (HERE / "EXPERIMENTS.md").write_text(markdown(results))
    with tempfile.TemporaryDirectory(prefix="clsx-experiments-") as temporary:
        root = Path(temporary)
        (root / "trec-descriptions.json").write_text(json.dumps(TREC_DESCRIPTIONS))
        _register_pseudo_labelling(root)
        for experiment in _with_pseudo_labeller_first(chosen):
            results[experiment.name] = run_with_interval(experiment, root)
            RESULTS.parent.mkdir(exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
            (HERE / "EXPERIMENTS.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
