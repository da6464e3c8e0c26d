#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, as one short run on a lent CUDA machine:
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default: $OUT, else /tmp/clsx-gpu)
# 1. pytest -m gpu: torch on CUDA (fp32, bf16, fp16) against the CPU fp32 reference, auto's
#    dtype choice, bench --device cuda; TensorRT where onnxruntime-gpu and tensorrt are
#    installed (they fail, saying so, where they are not).
# 2. benchmarks/gpu_throughput.py: HF pipeline vs clsx on random models of real shapes.
# The machine's python3 must have a CUDA torch, transformers, peft, onnxruntime, pyarrow,
# click, scikit-learn, psutil, tqdm and pytest; clsx runs from this checkout, not installed.
set -u -o pipefail
out=${1:-${OUT:-/tmp/clsx-gpu}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CLSX_CACHE=/tmp/clsx-gpu-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__,
  'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
timeout 180 python3 -m pytest -p no:logging -p no:cacheprovider -q -m gpu \
  tests/test_gpu.py tests/test_tensorrt.py 2>&1 | tee "$out/pytest.log"
timeout "${THROUGHPUT_SECONDS:-360}" python3 benchmarks/gpu_throughput.py --out "$out" 2>&1 |
  tee "$out/throughput.log"
