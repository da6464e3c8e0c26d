"""The loss every clsx student learns a teacher's outputs with (``clsx distill``): a
fine-tuned transformer's (:mod:`clsx.train.distill`) and a static student's head
(:mod:`clsx.train.static_student`)."""

from __future__ import annotations

import torch

from clsx.inference.decisions import MULTI, SINGLE

TINY = 1e-12  # floor of a teacher probability before its log (softmax outputs can be 0)


def soft_label_loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor,
                    gold: torch.Tensor, problem_type: str, temperature: float,
                    alpha: float) -> torch.Tensor:
    """The distillation loss of one batch: per row, ``alpha * hard + (1 - alpha) * soft``
    where ``gold`` is 1 (a gold label in ``labels``), ``soft`` alone where it is 0; the mean
    over the rows.

    - single-label: soft = T^2 * KL(teacher_T || student_T), each distribution softened by
      the temperature T (the teacher's from its probabilities: softmax(log p / T)); hard =
      cross-entropy with the gold label id;
    - multi-label: soft = binary cross-entropy with the teacher's sigmoid probabilities,
      hard = with the gold multi-hot row (each averaged over the labels);
    - regression: soft = squared error to the teacher's value, hard = to the gold value.
    """
    functional = torch.nn.functional
    if problem_type == SINGLE:
        teacher_log = functional.log_softmax(torch.log(teacher.clamp_min(TINY)) / temperature,
                                             dim=-1)
        student_log = functional.log_softmax(logits / temperature, dim=-1)
        soft = (teacher_log.exp() * (teacher_log - student_log)).sum(dim=-1) * temperature ** 2
        hard = functional.cross_entropy(logits, labels.long(), reduction="none")
    elif problem_type == MULTI:
        soft = functional.binary_cross_entropy_with_logits(logits, teacher,
                                                           reduction="none").mean(dim=-1)
        hard = functional.binary_cross_entropy_with_logits(logits, labels.float(),
                                                           reduction="none").mean(dim=-1)
    else:
        values = logits.reshape(-1)
        soft = (values - teacher.reshape(-1)) ** 2
        hard = (values - labels.float().reshape(-1)) ** 2
    weight = alpha * gold
    return ((1 - weight) * soft + weight * hard).mean()
