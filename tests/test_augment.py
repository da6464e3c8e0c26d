"""``clsx distill --augment``: perturbed copies of the --data texts for the teacher to label,
and which of them a student trains on."""

from __future__ import annotations

import numpy as np

from clsx.train.augment import auto_copies, perturbed
from clsx.train.distill import Copies, TeacherLabels, _transfer_rows

TEXTS = ["how many feet are in a mile", "who wrote hamlet", "", "what is the capital of peru"]


def test_copies_repeat_for_a_seed_and_point_at_the_text_they_copy():
    made, origins = perturbed(TEXTS, 5, seed=3)
    assert (made, origins) == perturbed(TEXTS, 5, seed=3)
    assert perturbed(TEXTS, 5, seed=4)[0] != made
    assert origins == [0] * 5 + [1] * 5 + [3] * 5  # a blank text has no copies
    every_word = {word for text in TEXTS for word in text.split()}
    for copy, origin in zip(made, origins, strict=True):
        assert copy.strip() and set(copy.split()) <= every_word
        own = set(TEXTS[origin].split())
        assert len(set(copy.split()) & own) >= min(1, len(own))  # a copy keeps some words
    assert sum(copy != TEXTS[o] for copy, o in zip(made, origins, strict=True)) >= 10


def test_auto_copies_aim_at_the_transfer_rows_with_at_most_ten_per_text():
    assert auto_copies(5452) == 9  # 54,520 rows in all
    assert auto_copies(100) == 10 and auto_copies(49_999) == 1
    assert auto_copies(50_000) == 0 and auto_copies(0) == 0


def test_only_the_copies_of_the_training_rows_train():
    """A copy of a held-out row would leak it into training: the chosen rows train with
    their own copies only, whose targets are the teacher's decisions and which have no gold."""
    probs = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    copies = Copies([f"copy of {i}" for i in (0, 0, 1, 2, 3)],
                    np.eye(3, dtype=np.float32)[[1, 1, 2, 0, 2]], np.array([1, 1, 2, 0, 2]),
                    np.array([0, 0, 1, 2, 3]))
    labels = TeacherLabels(["t0", "t1", "t2", "t3"], probs, np.array([1, 0, 0, 1], np.float32),
                           np.array([2, 1, 2, 0]), np.array([0, 1, 2, 0]), {}, copies)
    rows = _transfer_rows(labels, np.array([3, 0]))
    assert rows.texts == ["t3", "t0", "copy of 0", "copy of 0", "copy of 3"]
    np.testing.assert_array_equal(rows.targets, [0, 2, 1, 1, 2])  # gold, gold, teacher's
    np.testing.assert_array_equal(rows.has_gold, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(rows.origins, [3, 0, 0, 0, 3])
    np.testing.assert_array_equal(rows.probs, np.concatenate([probs[[3, 0]],
                                                              copies.probs[[0, 1, 4]]]))
