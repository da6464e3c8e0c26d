"""Texts longer than the model's context: truncate, keep head and tail, or slide a window.

``--long-text`` picks the strategy; it is stored in the manifest by ``clsx train`` and used
identically by eval, batch-predict and every backend (which may override it):

- ``truncate`` keeps the first ``max_length`` tokens (the tokenizer's own truncation; with
  a template, the text's first tokens inside the whole template);
- ``head-tail`` keeps the first quarter and the last three quarters of the room, dropping
  the middle (Sun et al., 2019: the strongest single-pass baseline for long documents);
- ``window`` splits the text into windows of ``max_length`` tokens that start every
  ``--window-stride`` tokens, classifies each window as a row of its own, and combines the
  windows' logits per text (``--aggregate``). Nothing is lost.

The template's tokens (and the model's special tokens) are kept whole in every window: only
the text's own tokens are cut. A text that fits is encoded exactly as ``truncate`` would.
"""

from __future__ import annotations

from dataclasses import dataclass

from clsx.errors import ClsxError

STRATEGIES = ("truncate", "head-tail", "window")
AGGREGATES = ("mean", "max", "vote")
HEAD_SHARE = 4  # head-tail keeps 1/HEAD_SHARE of the room from the head, the rest from the tail


@dataclass(frozen=True)
class LongText:
    """How texts longer than ``max_length`` tokens are handled.

    ``stride`` is the distance in text tokens between window starts (default: three quarters
    of a window, i.e. a quarter of overlap); ``aggregate`` combines the windows' logits:
    ``mean`` (default) or ``max`` of the logits, or ``vote`` (each window votes for its
    label; the probabilities become the vote shares; regression takes the median).
    """

    strategy: str = "truncate"
    stride: int | None = None
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ClsxError(f"--long-text must be one of {', '.join(STRATEGIES)}, "
                            f"got {self.strategy!r}")
        if self.aggregate not in AGGREGATES:
            raise ClsxError(f"--aggregate must be one of {', '.join(AGGREGATES)}, "
                            f"got {self.aggregate!r}")
        if self.stride is not None and self.stride < 1:
            raise ClsxError(f"--window-stride must be >= 1, got {self.stride}")

    def override(self, strategy: str | None = None, stride: int | None = None,
                 aggregate: str | None = None) -> LongText:
        """This setting with the given (non-None) fields replaced."""
        return LongText(strategy or self.strategy, stride or self.stride,
                        aggregate or self.aggregate)

    def cut(self, tokens: list[int], room: int) -> list[list[int]]:
        """The pieces of a text's ``tokens`` that are classified, each at most ``room`` long."""
        if len(tokens) <= room:
            return [tokens]
        if self.strategy == "head-tail":
            head = room // HEAD_SHARE
            return [tokens[:head] + tokens[len(tokens) - (room - head):]]
        if self.strategy == "window":
            return [tokens[start : start + room] for start in self.window_starts(len(tokens), room)]
        return [tokens[:room]]

    def window_starts(self, length: int, room: int) -> list[int]:
        """Start offsets of the windows over ``length`` tokens; the last one ends the text."""
        stride = self.stride or max(1, room - room // 4)
        if stride > room:
            raise ClsxError(f"--window-stride {stride} is longer than a window ({room} text "
                            "tokens): tokens between windows would be skipped")
        starts = list(range(0, length - room + 1, stride))
        if starts[-1] + room < length:
            starts.append(length - room)
        return starts
