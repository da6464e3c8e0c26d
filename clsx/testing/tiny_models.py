"""Tiny random classifiers built offline from configs, for tests and smoke benchmarks.

They have the real architectures (Qwen2, Llama, BERT) with head_dim 64 so every backend,
vLLM's CPU attention included, accepts them, and a small tokenizer trained on the spot.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clsx.artifacts.artifact import save_artifact
from clsx.artifacts.manifest import Manifest

FAMILIES = ("qwen2", "llama", "bert")
HIDDEN = 128
HEADS = 2  # head_dim = HIDDEN / HEADS = 64
CORPUS = (
    "the delivery was fast and the food arrived hot",
    "terrible service, the waiter ignored us for an hour",
    "great sound quality but the battery dies quickly",
    "I would not recommend this hotel to anyone",
    "an excellent course with clear explanations and useful exercises",
    "the app crashes every time I open the settings page",
    "shoes fit well, comfortable for long walks",
    "customer support answered within minutes and solved my problem",
    "the book starts slow but the ending is wonderful",
    "refund took three weeks, never ordering again",
    "What is the capital of France? How many people live there?",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: , . ; ! ? ( ) - ' \"",
)


def tiny_tokenizer(family: str):
    """A fast tokenizer trained on a few sentences: byte-level BPE, or WordPiece for BERT."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    if family == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        backend.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
            vocab_size=400, special_tokens=specials))
        backend.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[(t, backend.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]",
        )
    eos = "<|endoftext|>"
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=eos)


def tiny_config(family: str, vocab_size: int, num_labels: int, pad_token_id: int,
                **sizes: int):
    """A 2-layer config of the real architecture with head_dim 64.

    ``sizes`` (``hidden_size``, ``num_hidden_layers``, ``intermediate_size``, ...) override
    its dimensions, for a random model of a real model's shape (speed depends on the shape,
    not on the weights).
    """
    from transformers import BertConfig, LlamaConfig, Qwen2Config

    classes = {"qwen2": Qwen2Config, "llama": LlamaConfig, "bert": BertConfig}
    if family not in classes:
        raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")
    settings = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_attention_heads=HEADS,
        intermediate_size=256, num_hidden_layers=2, max_position_embeddings=512,
        num_labels=num_labels, pad_token_id=pad_token_id,
    )
    if family == "qwen2":
        settings.update(num_key_value_heads=1, tie_word_embeddings=False)
    if family == "llama":
        settings.update(num_key_value_heads=HEADS)
    return classes[family](**{**settings, **sizes})


def build_tiny_classifier(
    directory: Path,
    family: str = "qwen2",
    labels: tuple[str, ...] = ("negative", "neutral", "positive"),
    problem_type: str = "single_label_classification",
    max_length: int = 64,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
) -> Path:
    """Save a random tiny classifier artifact into ``directory`` and return it (``sizes``:
    see :func:`tiny_config`).

    The head is initialised wide (std 0.5) so that labels are decided by clear margins, not
    by rounding noise, which keeps label-agreement checks meaningful.
    """
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(family)
    num_labels = 1 if problem_type == "regression" else len(labels)
    config = tiny_config(family, len(tokenizer), num_labels, tokenizer.pad_token_id,
                         **(sizes or {}))
    model = AutoModelForSequenceClassification.from_config(config)
    head = model.classifier if family == "bert" else model.score
    torch.nn.init.normal_(head.weight, std=0.5)
    manifest = Manifest(
        family=family,
        labels=labels[:num_labels] if problem_type == "regression" else labels,
        problem_type=problem_type,
        max_length=max_length,
        pad_token_id=tokenizer.pad_token_id,
    )
    save_artifact(model.eval(), tokenizer, Path(directory), manifest)
    return Path(directory)


def build_tiny_base(directory: Path, family: str = "qwen2", seed: int = 0) -> Path:
    """Save a random tiny *base* model (CausalLM, or BertModel) with its tokenizer.

    This is what ``clsx train`` starts from: no classification head yet.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(family)
    config = tiny_config(family, len(tokenizer), 2, tokenizer.pad_token_id)
    model = (AutoModel if family == "bert" else AutoModelForCausalLM).from_config(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return Path(directory)
