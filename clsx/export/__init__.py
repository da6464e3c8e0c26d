"""Export stages: a merged model directory turned into another runnable format.

Light on purpose (no torch import): the CLI reads the format names from here.
"""

EXPORT_FORMATS = ("onnx", "onnx-int8", "vllm", "tensorrt")
