"""Export stages: a merged model directory turned into another runnable format.

Light on purpose (no torch import): the CLI reads the format names from here.
"""

EXPORT_FORMATS = ("onnx", "onnx-int8", "vllm", "tensorrt")
# The export gates' defaults (the CLI shows them in --help and passes only what is given).
FP32_TOLERANCE = 1e-4  # max |logit difference| of the fp32 ONNX graph from PyTorch
INT8_MIN_AGREEMENT = 0.98  # min share of int8 labels equal to fp32's
VLLM_DTYPE = "bf16"  # dtype of a vllm export's weights
