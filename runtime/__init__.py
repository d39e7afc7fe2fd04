"""din_runtime: score exported DIN models with numpy and onnxruntime only."""

__version__ = "0.1.0"
