"""A fake backend for the tests whose subject is not the model: scheduling, ordering, parts and
resume, the command line, bad inputs.

:class:`FakeRunner` computes logits from the token ids alone: a fixed random embedding per
token id, averaged over the row's real (unpadded) tokens, times a fixed matrix. A row's logits
therefore depend on its own tokens only, bit for bit: batching, padding, order and window size
cannot change them, which is exactly what the scheduler tests check. Opening it costs nothing,
so a test runs clsx end to end (real artifact, tokenizer, manifest, scheduler, Parquet) in a
fraction of a second instead of loading and running a torch model.

It stands in for the ``torch`` backend (:data:`FAKE_BACKEND`) through clsx's own backend
registry, ``clsx.inference.runners.RUNNERS``: ``tests/conftest.py``'s ``fake_runner`` fixture
swaps it in for one test, ``python -m tests.fake_clsx`` for a clsx subprocess.

:func:`fake_ray` runs ``--engine ray``'s driver as it is, with its actors in this process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

from clsx.artifacts.artifact import Artifact
from clsx.inference.runners.base import Runner, RunnerOptions

# Where clsx.inference.runners.RUNNERS finds the fake, as for every backend: "module:class".
FAKE_RUNNER = "tests.fakes:FakeRunner"
# The backend name the fake takes over: the one that runs the tiny models' torch format.
FAKE_BACKEND = "torch"
EMBEDDING_DIM = 16
SEED = 20251130
# Embeddings are N(0, 1) and averaged; this scale keeps logits mostly within a few units, so
# that labels vary from text to text and sigmoid thresholds near 0 and 1 are both reachable.
HEAD_SCALE = 0.75


class FakeRunner(Runner):
    """Deterministic float32 logits from token ids alone; no model is loaded.

    Every instance records the rows it was given, unpadded (``rows``), and is appended to
    ``opened``: a test reads what the scheduler sent, e.g. the windows of a long text.
    ``delay_s`` (seconds per batch) slows it down to a model's pace where a test needs time to
    interrupt a run.
    """

    formats = ("torch",)
    engine_options = ("dtype",)  # accepts --dtype like the torch backend it stands in for
    opened: ClassVar[list[FakeRunner]] = []
    delay_s: ClassVar[float] = 0.0

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        super().__init__(artifact, options)
        self.dtype = options.dtype or "fp32"
        rng = np.random.default_rng(SEED)
        self.embedding = rng.standard_normal((len(artifact.tokenizer), EMBEDDING_DIM))
        self.head = rng.standard_normal((EMBEDDING_DIM, artifact.manifest.num_labels))
        self.head *= HEAD_SCALE
        self.rows: list[list[int]] = []
        FakeRunner.opened.append(self)

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits of each row computed from its unpadded ids only (see :meth:`row_logits`)."""
        rows = [ids[mask.astype(bool)].tolist()
                for ids, mask in zip(input_ids, attention_mask, strict=True)]
        self.rows.extend(rows)
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.logits(rows)

    def logits(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Float32 logits (rows, num_labels) of unpadded rows, without recording them."""
        return np.stack([self.row_logits(row) for row in rows])

    def row_logits(self, row: Sequence[int]) -> np.ndarray:
        """One row's logits: the mean of its tokens' embeddings times the head.

        Computed row by row in float64 so that no other row, and no padding, takes part in
        any sum: the result is bit-identical however the row was batched. Ids wrap around
        the table (random parity batches may draw from a config vocabulary larger than the
        tokenizer's).
        """
        ids = np.asarray(row, dtype=np.int64) % len(self.embedding)
        return (self.embedding[ids].mean(axis=0) @ self.head).astype(np.float32)

    @property
    def precision(self) -> str:
        return self.dtype

    @property
    def description(self) -> str:
        return f"fake ({self.dtype}, cpu)"


class InProcessPool:
    """Just enough of ``ray.util.ActorPool`` for :func:`ray_batch_predict`: each submitted
    unit runs at once on one in-process Predictor, which loses the last ``lost`` rows of
    its predictions."""

    def __init__(self, actors, lost: int) -> None:
        self.actor, self.lost, self.results = actors[0], lost, []

    def has_free(self) -> bool:
        return True

    def has_next(self) -> bool:
        return bool(self.results)

    def submit(self, call, args) -> None:
        first, columns, counts = call(self.actor, args)
        self.results.append((first, [c.slice(0, len(c) - self.lost) for c in columns], counts))

    def get_next_unordered(self):
        return self.results.pop()


def fake_ray(monkeypatch, lost: int = 0) -> None:
    """Run ``--engine ray`` in this process on :class:`InProcessPool` instead of Ray: the
    driver's code as it is, its actors' code in this process."""
    from clsx.batch import ray_engine

    def remote(cls):
        def make(*args):
            instance = cls(*args)
            return SimpleNamespace(predict=SimpleNamespace(remote=instance.predict))
        return SimpleNamespace(options=lambda **resources: SimpleNamespace(remote=make))

    fake = SimpleNamespace(remote=remote, kill=lambda actor: None, util=SimpleNamespace(
        ActorPool=lambda actors: InProcessPool(actors, lost)))
    monkeypatch.setattr(ray_engine, "_import_ray", lambda: fake)
    monkeypatch.setattr(ray_engine, "_start_ray", lambda *args: None)
