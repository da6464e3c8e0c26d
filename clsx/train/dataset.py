"""Training rows for the Trainer: token ids encoded once by the encoder that predicts later,
padded exactly as the predict scheduler pads, and predictions put back one row per text."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clsx.inference.encoding import EncodedWindow
from clsx.inference.scheduler import pad
from clsx.inference.windows import combine, first_inputs
from clsx.train.config import TrainConfig


class EncodedDataset(torch.utils.data.Dataset):
    """Token ids and targets, encoded once by the same encoder that predicts later.

    With ``--long-text window`` a text is several rows (its windows), each with the text's
    target; ``pieces`` says how many, so that evaluation can combine them per text.
    ``extras`` are further per-row arrays (a distillation teacher's probabilities), each item
    carrying its row of them under the same name.
    """

    def __init__(self, ids: list[list[int]], targets: np.ndarray,
                 pieces: np.ndarray | None = None,
                 extras: dict[str, np.ndarray] | None = None) -> None:
        self.ids = ids
        self.targets = targets
        self.pieces = pieces
        self.extras = extras or {}

    @classmethod
    def of(cls, encoded: EncodedWindow, targets: np.ndarray,
           extras: dict[str, np.ndarray] | None = None) -> EncodedDataset:
        extras = extras or {}
        if encoded.pieces is None:
            return cls(encoded.ids, targets, extras=extras)
        return cls(encoded.ids, np.repeat(targets, encoded.pieces, axis=0), encoded.pieces,
                   {name: np.repeat(values, encoded.pieces, axis=0)
                    for name, values in extras.items()})

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.ids[index], "labels": self.targets[index],
                **{name: values[index] for name, values in self.extras.items()}}


class Collator:
    """Dynamic padding with the manifest's pad id, exactly as the predict scheduler pads;
    the items' extra entries (see :class:`EncodedDataset`) become float tensors."""

    def __init__(self, pad_token_id: int, problem_type: str) -> None:
        self.pad_token_id = pad_token_id
        self.label_dtype = torch.long if problem_type == "single_label_classification" else (
            torch.float32)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad([row["input_ids"] for row in rows], self.pad_token_id)
        labels = torch.tensor(np.array([row["labels"] for row in rows]), dtype=self.label_dtype)
        extras = {name: torch.tensor(np.array([row[name] for row in rows]), dtype=torch.float32)
                  for name in rows[0] if name not in ("input_ids", "labels")}
        return {"input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(attention_mask), "labels": labels, **extras}


def per_text(prediction: Any, eval_set: EncodedDataset, config: TrainConfig
             ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets of a Trainer prediction, one row per text (windows combined), as
    eval and predict will see them."""
    logits = prediction.predictions
    logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits, np.float32)
    targets = prediction.label_ids
    if eval_set.pieces is not None:
        logits = combine(logits, eval_set.pieces, config.aggregate, config.problem_type)
        targets = targets[first_inputs(eval_set.pieces)]
    return logits, targets
